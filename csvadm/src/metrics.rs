//! `csvadm node metrics`: the addressed node's key figures, read from the OpenMetrics
//! text its daemon returns over the admin socket (the same text its `[metrics]`
//! endpoint serves; refused when metrics are off). The samples are parsed here
//! (`parse`: name, labels, value; comments skipped), then summed into one view.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::size::human;

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    fn label(&self, k: &str) -> &str {
        self.labels.get(k).map_or("", String::as_str)
    }
}

/// A sample line that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// The line (its first 120 characters).
    pub text: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {:?} is not a sample", self.line, self.text)
    }
}

impl std::error::Error for ParseError {}

/// Parses the sample lines of an OpenMetrics (or Prometheus) text; a line that does
/// not parse is an error naming it.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).ok_or_else(|| ParseError {
            line: i + 1,
            text: line.chars().take(120).collect(),
        })?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line.get(..name_end)?.to_string();
    let mut rest = line.get(name_end..)?;
    let mut labels = BTreeMap::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => break i,
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut val = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => val.push('\n'),
                                c => val.push(c),
                            },
                            c => val.push(c),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), val);
                }
                c => key.push(c),
            }
        };
        rest = r.get(end + 1..)?;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Sum of the samples named `name` whose labels include every pair of `with`.
fn sum(s: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    s.iter()
        .filter(|x| x.name == name && with.iter().all(|(k, v)| x.label(k) == *v))
        .map(|x| x.value)
        .sum()
}

/// Mean of a histogram in milliseconds (`None`: nothing observed).
fn mean_ms(s: &[Sample], base: &str, with: &[(&str, &str)]) -> Option<f64> {
    let n = sum(s, &format!("{base}_count"), with);
    (n > 0.0).then(|| sum(s, &format!("{base}_sum"), with) / n * 1e3)
}

fn by_label(s: &[Sample], name: &str, label: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for x in s.iter().filter(|x| x.name == name) {
        *m.entry(x.label(label).to_string()).or_insert(0) += x.value as u64;
    }
    m
}

/// One export's NBD figures.
#[derive(Debug, Serialize, PartialEq)]
pub struct ExportView {
    pub export: String,
    pub reads: u64,
    pub read_bytes: u64,
    pub writes: u64,
    pub write_bytes: u64,
    /// Every request kind.
    pub requests: u64,
    pub errors: u64,
    pub mean_latency_ms: Option<f64>,
}

/// The key figures of one node.
#[derive(Debug, Serialize, PartialEq)]
pub struct MetricsView {
    /// The node's endpoint address.
    pub endpoint: String,
    pub raft_term: u64,
    pub raft_commit_index: u64,
    pub raft_applied_index: u64,
    pub raft_apply_lag_entries: u64,
    pub raft_leader: bool,
    pub proposals: BTreeMap<String, u64>,
    pub proposal_mean_ms: Option<f64>,
    pub lease_renewals: BTreeMap<String, u64>,
    pub lease_renewal_lag_mean_ms: Option<f64>,
    pub fence_closures: BTreeMap<String, u64>,
    /// The mode with gauge 1 (`direct`, `redirected`, ...; empty without redirection).
    pub path_state: String,
    pub redirected_bytes: u64,
    pub extents: BTreeMap<String, u64>,
    pub vhds_attached: u64,
    pub vms: BTreeMap<String, u64>,
    pub migrations: BTreeMap<String, u64>,
    pub migration_downtime_mean_ms: Option<f64>,
    pub exports: Vec<ExportView>,
}

impl MetricsView {
    /// The view of a node's metrics text.
    pub fn from_text(endpoint: &str, text: &str) -> Result<MetricsView, ParseError> {
        let s = parse(text)?;
        let g = |name: &str| sum(&s, name, &[]) as u64;
        let mut exports: Vec<String> = s
            .iter()
            .filter(|x| x.name == "csv_nbd_requests_total")
            .map(|x| x.label("export").to_string())
            .collect();
        exports.sort();
        exports.dedup();
        let exports = exports
            .into_iter()
            .map(|e| {
                let ex = [("export", e.as_str())];
                let op = |o: &'static str| [("export", e.as_str()), ("op", o)];
                ExportView {
                    reads: sum(&s, "csv_nbd_requests_total", &op("read")) as u64,
                    read_bytes: sum(&s, "csv_nbd_bytes_total", &op("read")) as u64,
                    writes: sum(&s, "csv_nbd_requests_total", &op("write")) as u64,
                    write_bytes: sum(&s, "csv_nbd_bytes_total", &op("write")) as u64,
                    requests: sum(&s, "csv_nbd_requests_total", &ex) as u64,
                    errors: sum(&s, "csv_nbd_request_errors_total", &ex) as u64,
                    mean_latency_ms: mean_ms(&s, "csv_nbd_request_duration_seconds", &ex),
                    export: e,
                }
            })
            .collect();
        let path_state = s
            .iter()
            .find(|x| x.name == "csv_path_state" && x.value >= 1.0)
            .map(|x| x.label("state").to_string())
            .unwrap_or_default();
        let mut migrations = BTreeMap::new();
        for x in s.iter().filter(|x| x.name == "csv_migrations_total") {
            let k = format!("{}_{}", x.label("kind"), x.label("result"));
            *migrations.entry(k).or_insert(0) += x.value as u64;
        }
        Ok(MetricsView {
            endpoint: endpoint.to_string(),
            raft_term: g("csv_raft_term"),
            raft_commit_index: g("csv_raft_commit_index"),
            raft_applied_index: g("csv_raft_applied_index"),
            raft_apply_lag_entries: g("csv_raft_apply_lag_entries"),
            raft_leader: g("csv_raft_is_leader") == 1,
            proposals: by_label(&s, "csv_raft_proposals_total", "result"),
            proposal_mean_ms: mean_ms(&s, "csv_raft_proposal_duration_seconds", &[]),
            lease_renewals: by_label(&s, "csv_lease_renewals_total", "result"),
            lease_renewal_lag_mean_ms: mean_ms(&s, "csv_lease_renewal_lag_seconds", &[]),
            fence_closures: by_label(&s, "csv_fence_closures_total", "reason"),
            path_state,
            redirected_bytes: g("csv_redirected_bytes_total"),
            extents: by_label(&s, "csv_volume_extents", "state"),
            vhds_attached: g("csv_vhds_attached"),
            vms: by_label(&s, "csv_vms", "state")
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .collect(),
            migrations,
            migration_downtime_mean_ms: mean_ms(&s, "csv_migration_downtime_seconds", &[]),
            exports,
        })
    }
}

fn counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1} ms"))
}

impl fmt::Display for MetricsView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "endpoint:    http://{}/metrics", self.endpoint)?;
        writeln!(
            f,
            "raft:        term {}, commit {}, applied {} (lag {}){}",
            self.raft_term,
            self.raft_commit_index,
            self.raft_applied_index,
            self.raft_apply_lag_entries,
            if self.raft_leader { ", leader" } else { "" }
        )?;
        writeln!(
            f,
            "proposals:   {}; mean {}",
            counts(&self.proposals),
            ms(self.proposal_mean_ms)
        )?;
        writeln!(
            f,
            "lease:       renewals {}; mean lag {}; fence closures {}",
            counts(&self.lease_renewals),
            ms(self.lease_renewal_lag_mean_ms),
            counts(&self.fence_closures)
        )?;
        let path = if self.path_state.is_empty() {
            "-"
        } else {
            &self.path_state
        };
        writeln!(
            f,
            "path:        {path}; redirected {}",
            human(self.redirected_bytes)
        )?;
        writeln!(f, "extents:     {}", counts(&self.extents))?;
        writeln!(
            f,
            "VHDs:        {} attached; VMs here: {}",
            self.vhds_attached,
            counts(&self.vms)
        )?;
        write!(
            f,
            "migrations:  {}; mean downtime {}",
            counts(&self.migrations),
            ms(self.migration_downtime_mean_ms)
        )?;
        if !self.exports.is_empty() {
            write!(
                f,
                "\nEXPORT               READS     READ        WRITES    WRITTEN     ERRORS  MEAN_LATENCY"
            )?;
            for e in &self.exports {
                write!(
                    f,
                    "\n{:<20} {:<9} {:<11} {:<9} {:<11} {:<7} {}",
                    e.export,
                    e.reads,
                    human(e.read_bytes),
                    e.writes,
                    human(e.write_bytes),
                    e.errors,
                    ms(e.mean_latency_ms)
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn escape(v: &str) -> String {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    }

    proptest! {
        /// Any text: an answer, never a panic.
        #[test]
        fn parse_never_panics(text in "\\PC*") {
            let _ = parse(&text);
        }

        /// A sample written the way an encoder writes it parses back to itself.
        #[test]
        fn samples_round_trip(
            name in "[a-z_][a-z0-9_]{0,20}",
            labels in proptest::collection::btree_map("[a-z_][a-z0-9_]{0,8}", "\\PC{0,12}", 0..4),
            value in -1e12f64..1e12,
        ) {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            let line = if l.is_empty() {
                format!("{name} {value}")
            } else {
                format!("{name}{{{}}} {value}", l.join(","))
            };
            let s = parse(&line).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(s, vec![Sample { name, labels, value }]);
        }
    }

    const TEXT: &str = r#"# HELP csv_nbd_requests NBD requests.
# TYPE csv_nbd_requests counter
csv_nbd_requests_total{export="d0",op="write"} 4
csv_nbd_requests_total{export="d0",op="read"} 2
csv_nbd_requests_total{export="d0",op="flush"} 1
# TYPE csv_nbd_bytes counter
# UNIT csv_nbd_bytes bytes
csv_nbd_bytes_total{export="d0",op="write"} 16384
csv_nbd_bytes_total{export="d0",op="read"} 8192
csv_nbd_request_duration_seconds_bucket{le="+Inf",export="d0",op="write"} 4
csv_nbd_request_duration_seconds_sum{export="d0",op="write"} 0.004
csv_nbd_request_duration_seconds_count{export="d0",op="write"} 4
csv_nbd_request_duration_seconds_sum{export="d0",op="read"} 0.003
csv_nbd_request_duration_seconds_count{export="d0",op="read"} 3
csv_raft_term 3
csv_raft_commit_index 40
csv_raft_applied_index 39
csv_raft_apply_lag_entries 1
csv_raft_is_leader 1
csv_raft_proposals_total{result="committed"} 12
csv_path_state{state="direct"} 1
csv_path_state{state="redirected"} 0
csv_volume_extents{state="free"} 90
csv_vms{state="running"} 2
csv_vms{state="failed"} 0
csv_migrations_total{kind="live",result="completed"} 1
csv_vhds_attached 1
# EOF
"#;

    #[test]
    fn parses_labels_with_escapes_and_special_values() {
        let s =
            parse("a{x=\"q\\\"u,o}te\",y=\"\"} +Inf\nb 1.5e3 # {trace=\"1\"} 2\n").expect("parse");
        assert_eq!(s[0].label("x"), "q\"u,o}te");
        assert_eq!(s[0].label("y"), "");
        assert!(s[0].value.is_infinite());
        assert_eq!(s[1].value, 1500.0);
        assert!(parse("a{x=1} 2\n").is_err());
        assert!(parse("a{x=\"1\"} two\n").is_err());
    }

    #[test]
    fn view_sums_the_key_figures() {
        let v = MetricsView::from_text("127.0.0.1:9464", TEXT).expect("view");
        assert_eq!(v.raft_term, 3);
        assert_eq!(v.raft_apply_lag_entries, 1);
        assert!(v.raft_leader);
        assert_eq!(v.path_state, "direct");
        assert_eq!(v.vms, BTreeMap::from([("running".to_string(), 2)]));
        assert_eq!(v.migrations.get("live_completed"), Some(&1));
        assert_eq!(
            v.exports,
            vec![ExportView {
                export: "d0".into(),
                reads: 2,
                read_bytes: 8192,
                writes: 4,
                write_bytes: 16384,
                requests: 7,
                errors: 0,
                mean_latency_ms: Some(1.0),
            }]
        );
        let t = v.to_string();
        assert!(
            t.contains("raft:        term 3, commit 40, applied 39 (lag 1), leader"),
            "{t}"
        );
        assert!(
            t.contains(
                "\nd0                   2         8.0 KiB     4         16.0 KiB    0       1.0 ms"
            ),
            "{t}"
        );
    }
}
