//! Named fail points (tikv/fail-rs), for the process-level safety tests: a real csv-node
//! started with `FAILPOINTS="name=action;..."` crashes, stalls or tears a write at an exact
//! cut point of the data path (docs/design/042). Unset, nothing happens.
//!
//! Actions are fail-rs's (`return`, `return(arg)`, `sleep(ms)`, `N*action`, `a->b`, ...).
//! At a crash point, `return` aborts the process there (what `kill -9` does, at a chosen
//! instant); at a delay point, `return(ms)` waits that long.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set once any point is configured: until then every point costs one relaxed load (the
/// extent file's write path asks one per write).
static ARMED: AtomicBool = AtomicBool::new(false);

/// Configures one point (fail-rs's action syntax).
pub fn cfg(name: &str, actions: &str) -> Result<(), String> {
    fail::cfg(name, actions)?;
    ARMED.store(true, Ordering::Release);
    Ok(())
}

/// Configures the fail points named in `FAILPOINTS` (`name=actions;...`). An entry that
/// does not parse is an error naming it; points that no code defines are ignored.
pub fn init_from_env() -> Result<usize, String> {
    let Ok(spec) = std::env::var("FAILPOINTS") else {
        return Ok(0);
    };
    let mut n = 0;
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, actions) = entry
            .split_once('=')
            .ok_or_else(|| format!("FAILPOINTS entry {entry:?}: expected name=actions"))?;
        cfg(name.trim(), actions.trim()).map_err(|e| format!("FAILPOINTS entry {entry:?}: {e}"))?;
        n += 1;
    }
    Ok(n)
}

/// A crash point: aborts the process when `name` is configured to `return`.
pub fn crash(name: &str) {
    if ARMED.load(Ordering::Relaxed) && fail::eval(name, |_| ()).is_some() {
        eprintln!("fail point {name}: aborting the process");
        std::process::abort();
    }
}

/// The argument of `name` when it is configured to `return(arg)` (`Some(None)` for a
/// bare `return`), `None` when it is off.
pub fn value(name: &str) -> Option<Option<String>> {
    if !ARMED.load(Ordering::Relaxed) {
        return None;
    }
    fail::eval(name, |arg| arg)
}

/// The milliseconds of a delay point configured `return(ms)`.
pub fn delay(name: &str) -> Option<std::time::Duration> {
    value(name).map(|a| {
        std::time::Duration::from_millis(a.and_then(|s| s.trim().parse().ok()).unwrap_or(0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_follow_their_configuration() {
        assert_eq!(value("test.unset"), None);
        cfg("test.delay", "return(250)").expect("cfg");
        assert_eq!(
            delay("test.delay"),
            Some(std::time::Duration::from_millis(250))
        );
        cfg("test.once", "1*return(x)->off").expect("cfg");
        assert_eq!(value("test.once"), Some(Some("x".into())));
        assert_eq!(value("test.once"), None);
        assert!(cfg("test.bad", "nonsense(").is_err());
    }
}
