//! The non-blocking scope (docs/design/042 §10). A server that runs a request on a
//! runtime worker thread does it inside [`run`]; there, an extent file answers
//! [`ExtentError::WouldBlock`](crate::ExtentError::WouldBlock), before any side effect,
//! instead of anything that could block the thread: waiting on a closed fence, growing
//! (a coordinator round trip), or a LUN call on a path that waits on a network. The
//! server then runs the request again in its blocking pool.

use std::cell::Cell;

thread_local! {
    static NON_BLOCKING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the non-blocking scope set on this thread (restored after, even on
/// unwind).
pub fn run<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            NON_BLOCKING.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(NON_BLOCKING.with(|c| c.replace(true)));
    f()
}

/// True inside [`run`].
pub fn active() -> bool {
    NON_BLOCKING.with(Cell::get)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_scope_is_set_inside_and_restored_after() {
        assert!(!super::active());
        let inner = super::run(|| (super::active(), super::run(super::active)));
        assert_eq!(inner, (true, true));
        assert!(!super::active());
        let r = std::panic::catch_unwind(|| super::run(|| panic!("x")));
        assert!(r.is_err());
        assert!(!super::active());
    }
}
