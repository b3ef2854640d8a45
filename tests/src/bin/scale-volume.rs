//! Cluster-volume scale benchmark (run by `scripts/scale-volume`, release build): N nodes
//! on one shared sparse file LUN, V small dynamic VHDs created and attached spread over
//! the nodes; prints memory per attached idle VHD (target under 1 MiB), node RSS
//! min/median/max, create and attach times, and checks a sample of exports with libnbd.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use csv_tests::scale::{ScaleOptions, mib, run};

/// Memory an attached idle VHD may cost (issue 6).
const TARGET_PER_VHD: f64 = 1024.0 * 1024.0;

fn args() -> Result<(ScaleOptions, bool)> {
    let mut o = ScaleOptions {
        nodes: 16,
        vhds: 1000,
        vhd_size: 64 << 20,
        lun_size: 64 << 30,
        sample: 16,
    };
    let mut check = false;
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let num = |i: usize| -> Result<u64> {
            v.get(i + 1)
                .with_context(|| format!("{} needs a value", v[i]))?
                .parse()
                .with_context(|| format!("{} needs a number", v[i]))
        };
        match v[i].as_str() {
            "--nodes" => o.nodes = num(i)?,
            "--vhds" => o.vhds = num(i)? as usize,
            "--vhd-size-mib" => o.vhd_size = num(i)? << 20,
            "--lun-size-gib" => o.lun_size = num(i)? << 30,
            "--sample" => o.sample = num(i)? as usize,
            "--check" => {
                check = true;
                i += 1;
                continue;
            }
            other => bail!(
                "unknown argument {other}; usage: scale-volume [--nodes N] [--vhds V] [--vhd-size-mib M] [--lun-size-gib G] [--sample S (0: all)] [--check]"
            ),
        }
        i += 2;
    }
    if o.nodes == 0 || o.nodes > 64 || o.vhds == 0 {
        bail!("--nodes must be 1..=64 and --vhds at least 1");
    }
    Ok((o, check))
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn main() -> Result<()> {
    let (o, check) = args()?;
    eprintln!(
        "scale-volume: {} nodes, {} dynamic VHDs of {} MiB, LUN {} GiB (sparse file)",
        o.nodes,
        o.vhds,
        o.vhd_size >> 20,
        o.lun_size >> 30
    );
    let (_vc, r) = run(&o)?;
    println!("node  vhds  rss-before  rss-after  per-vhd");
    for n in &r.nodes {
        println!(
            "{:>4}  {:>4}  {:>10}  {:>9}  {:>7.1} KiB",
            n.id,
            n.vhds,
            mib(n.rss_before as f64),
            mib(n.rss_after as f64),
            n.per_vhd() / 1024.0
        );
    }
    let (lo, med, hi) = r.rss_spread();
    let total = r.create + r.attach;
    println!(
        "memory per attached idle VHD: {:.1} KiB overall, {:.1} KiB worst node (target < 1024 KiB)",
        r.per_vhd_overall() / 1024.0,
        r.per_vhd_max() / 1024.0
    );
    println!(
        "node RSS after attaches: min {}, median {}, max {}",
        mib(lo as f64),
        mib(med as f64),
        mib(hi as f64)
    );
    println!(
        "create {} ({:.1}/s), attach {} ({:.1}/s), total {}",
        secs(r.create),
        o.vhds as f64 / r.create.as_secs_f64(),
        secs(r.attach),
        o.vhds as f64 / r.attach.as_secs_f64(),
        secs(total)
    );
    println!(
        "per node after attaches (max): {} open fds, {} threads; LUN file allocated: {}",
        r.max_fds,
        r.max_threads,
        mib(r.lun_allocated as f64)
    );
    println!(
        "exports checked with libnbd (size, 4 KiB write + read back, zero block 0): {}/{} answered",
        r.checked, r.checked
    );
    if check && r.per_vhd_max() >= TARGET_PER_VHD {
        bail!("memory per attached VHD over the target");
    }
    Ok(())
}
