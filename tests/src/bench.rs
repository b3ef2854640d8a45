//! What the benchmark bins share: `--flag N` arguments.

/// Parses `--name N` pairs of the process's arguments into `flags` (each a name and the
/// value it sets); panics with `usage` on an unknown flag or a missing number.
pub fn numeric_args(usage: &str, flags: &mut [(&str, &mut u64)]) {
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let n: u64 = v
            .get(i + 1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{} needs a number; usage: {usage}", v[i]));
        match flags.iter_mut().find(|(name, _)| *name == v[i]) {
            Some((_, value)) => **value = n,
            None => panic!("unknown argument {}; usage: {usage}", v[i]),
        }
        i += 2;
    }
}
