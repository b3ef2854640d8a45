//! The checker: judges a [`History`] block by block.
//!
//! Each block is a register whose writes are whole stamped blocks. With `end(W)` the time
//! after which write `W` can no longer land (its completion when acknowledged; its
//! completion plus the in-doubt bound when it errored or timed out), the rules are:
//!
//! 1. **Whole stamps.** A read sees zeroes or a whole stamp of this block, of a write
//!    that exists in the history (`torn`, `misplaced`, `phantom`). A torn block is
//!    allowed only while a write of it may still be landing (one racing the read, or
//!    one without an answer that no acknowledged write has replaced yet).
//! 2. **No read from the future.** The write a read sees was invoked before the read
//!    completed (`future`).
//! 3. **Register.** A read never sees a write `W` (or the initial zeroes) when another
//!    acknowledged write `W2` of the block started after `end(W)` and completed before
//!    the read started, unless a crash came between `W2`'s completion and the read and
//!    no acknowledged flush covers `W2` (a flush invoked after `W2` completed and
//!    acknowledged before the read): `stale_read`, or `lost_flushed_write` when only the
//!    flush makes `W2` binding.
//! 4. **No stale generation.** A read never sees a generation older than one a read of
//!    the block already returned (completed before it started), with the same crash
//!    exception: `stale_generation`.
//! 5. **Monotonic reads.** A client's read never sees a write that ended before the start
//!    of a write its own earlier read saw, with the same exception: `non_monotonic`.
//!
//! Crashes are the faults of a class that loses memory ([`crate::history::FaultClass::crashes`]), at the
//! fault's start, on any node (a write may have been forwarded through any of them).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::history::{Event, History, Outcome};
use crate::stamp::Seen;

/// One broken rule, with the operations involved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// `torn`, `misplaced`, `phantom`, `future`, `stale_read`, `lost_flushed_write`,
    /// `stale_generation`, `non_monotonic`.
    pub kind: &'static str,
    /// VHD id.
    pub vhd: u64,
    /// Block.
    pub block: u64,
    /// What happened, in words.
    pub detail: String,
    /// The history lines involved (as written).
    pub ops: Vec<String>,
}

/// Counts of a history, and its violations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Operations (writes, reads, flushes).
    pub operations: u64,
    /// Writes acknowledged.
    pub writes_acked: u64,
    /// Writes answered with an error.
    pub writes_error: u64,
    /// Writes without an answer.
    pub writes_unknown: u64,
    /// Reads acknowledged.
    pub reads_acked: u64,
    /// Reads not acknowledged (error or unknown).
    pub reads_failed: u64,
    /// Flushes acknowledged.
    pub flushes_acked: u64,
    /// Flushes not acknowledged.
    pub flushes_failed: u64,
    /// Operations whose outcome is unknown.
    pub unknown: u64,
    /// Blocks read or written.
    pub blocks: u64,
    /// Faults injected, by class.
    pub faults: BTreeMap<String, u64>,
    /// What broke.
    pub violations: Vec<Violation>,
}

impl Report {
    /// No violation.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The report as operators read it (`csvadm chaos check`, `csv-chaos run`): the counts,
/// the faults, then each violation with the history lines involved.
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "operations {}: writes {} acknowledged, {} errors, {} unknown; reads {} ({} failed); flushes {} ({} failed); blocks {}",
            self.operations,
            self.writes_acked,
            self.writes_error,
            self.writes_unknown,
            self.reads_acked,
            self.reads_failed,
            self.flushes_acked,
            self.flushes_failed,
            self.blocks
        )?;
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(f, "faults: {}", faults.join(", "))?;
        write!(f, "violations: {}", self.violations.len())?;
        for v in &self.violations {
            write!(
                f,
                "\n  {} (VHD {} block {}): {}",
                v.kind, v.vhd, v.block, v.detail
            )?;
            for op in &v.ops {
                write!(f, "\n      {op}")?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct W {
    ev: usize,
    id: u64,
    generation: u64,
    invoke: u64,
    complete: u64,
    acked: bool,
    end: u64,
}

#[derive(Debug, Clone)]
struct R {
    ev: usize,
    client: u64,
    invoke: u64,
    complete: u64,
    seen: Seen,
}

/// Argmax of `key` over index ranges, O(1) per query after O(n log n) set-up.
struct Sparse {
    table: Vec<Vec<usize>>,
}

impl Sparse {
    fn new(key: &[u64]) -> Sparse {
        let mut table = vec![(0..key.len()).collect::<Vec<_>>()];
        let mut span = 1;
        while span * 2 <= key.len() {
            let prev = &table[table.len() - 1];
            let row = (0..=key.len() - span * 2)
                .map(|i| {
                    let (a, b) = (prev[i], prev[i + span]);
                    if key[b] > key[a] { b } else { a }
                })
                .collect();
            table.push(row);
            span *= 2;
        }
        Sparse { table }
    }

    /// Argmax over `lo..hi` (None when empty).
    fn argmax(&self, key: &[u64], lo: usize, hi: usize) -> Option<usize> {
        if lo >= hi {
            return None;
        }
        let k = (usize::BITS - 1 - (hi - lo).leading_zeros()) as usize;
        let (a, b) = (self.table[k][lo], self.table[k][hi - (1 << k)]);
        Some(if key[b] > key[a] { b } else { a })
    }
}

/// Per VHD: acknowledged flushes sorted by completion, with the running maximum of their
/// invoke times ("every write completed before this time is covered").
struct Flushes {
    complete: Vec<u64>,
    covers: Vec<u64>,
}

impl Flushes {
    /// Writes that completed before the returned time are covered by a flush
    /// acknowledged before `t`.
    fn covered_before(&self, t: u64) -> u64 {
        let n = self.complete.partition_point(|c| *c < t);
        if n == 0 { 0 } else { self.covers[n - 1] }
    }
}

struct Ctx<'a> {
    h: &'a History,
    crashes: Vec<u64>,
    flushes: HashMap<u64, Flushes>,
    out: Vec<Violation>,
}

impl Ctx<'_> {
    fn line(&self, ev: usize) -> String {
        serde_json::to_string(&self.h.events[ev]).unwrap_or_default()
    }

    fn violation(&mut self, kind: &'static str, key: (u64, u64), detail: String, evs: &[usize]) {
        let ops = evs.iter().map(|e| self.line(*e)).collect();
        self.out.push(Violation {
            kind,
            vhd: key.0,
            block: key.1,
            detail,
            ops,
        });
    }

    /// The last crash that started before `t`.
    fn last_crash_before(&self, t: u64) -> Option<u64> {
        let n = self.crashes.partition_point(|c| *c < t);
        n.checked_sub(1).map(|i| self.crashes[i])
    }

    fn crash_between(&self, a: u64, b: u64) -> bool {
        self.last_crash_before(b).is_some_and(|c| c > a)
    }

    /// Whether write `w` of `vhd` may have been lost by a crash between `from` and `to`
    /// (not acknowledged, or no acknowledged flush covers it by `to`).
    fn may_be_lost(&self, vhd: u64, w: Option<&W>, from: u64, to: u64) -> bool {
        if !self.crash_between(from, to) {
            return false;
        }
        match w {
            None => false,
            Some(w) => {
                !w.acked
                    || self
                        .flushes
                        .get(&vhd)
                        .is_none_or(|f| f.covered_before(to) <= w.complete)
            }
        }
    }
}

/// Judges a history.
pub fn check(h: &History) -> Report {
    let mut rep = Report::default();
    let bound = h.header.in_doubt_us;
    let mut writes: BTreeMap<(u64, u64), Vec<W>> = BTreeMap::new();
    let mut reads: BTreeMap<(u64, u64), Vec<R>> = BTreeMap::new();
    let mut flushes: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
    let mut crashes = Vec::new();
    for (ev, e) in h.events.iter().enumerate() {
        match e {
            Event::Header(_) => {}
            Event::Write {
                vhd,
                block,
                id,
                generation,
                invoke,
                complete,
                outcome,
                ..
            } => {
                rep.operations += 1;
                match outcome {
                    Outcome::Ok => rep.writes_acked += 1,
                    Outcome::Error => rep.writes_error += 1,
                    Outcome::Unknown => {
                        rep.writes_unknown += 1;
                        rep.unknown += 1;
                    }
                }
                let acked = *outcome == Outcome::Ok;
                writes.entry((*vhd, *block)).or_default().push(W {
                    ev,
                    id: *id,
                    generation: *generation,
                    invoke: *invoke,
                    complete: *complete,
                    acked,
                    end: if acked {
                        *complete
                    } else {
                        complete.saturating_add(bound)
                    },
                });
            }
            Event::Read {
                client,
                vhd,
                block,
                invoke,
                complete,
                outcome,
                seen,
                ..
            } => {
                rep.operations += 1;
                match (outcome, seen) {
                    (Outcome::Ok, Some(seen)) => {
                        rep.reads_acked += 1;
                        reads.entry((*vhd, *block)).or_default().push(R {
                            ev,
                            client: *client,
                            invoke: *invoke,
                            complete: *complete,
                            seen: seen.clone(),
                        });
                    }
                    (o, _) => {
                        rep.reads_failed += 1;
                        if *o == Outcome::Unknown {
                            rep.unknown += 1;
                        }
                    }
                }
            }
            Event::Flush {
                vhd,
                invoke,
                complete,
                outcome,
                ..
            } => {
                rep.operations += 1;
                match outcome {
                    Outcome::Ok => {
                        rep.flushes_acked += 1;
                        flushes.entry(*vhd).or_default().push((*complete, *invoke));
                    }
                    o => {
                        rep.flushes_failed += 1;
                        if *o == Outcome::Unknown {
                            rep.unknown += 1;
                        }
                    }
                }
            }
            Event::Fault { class, start, .. } => {
                *rep.faults.entry(class.name().to_string()).or_default() += 1;
                if class.crashes() {
                    crashes.push(*start);
                }
            }
        }
    }
    crashes.sort_unstable();
    let flushes = flushes
        .into_iter()
        .map(|(vhd, mut f)| {
            f.sort_unstable();
            let mut covers = Vec::with_capacity(f.len());
            let mut m = 0;
            for (_, inv) in &f {
                m = m.max(*inv);
                covers.push(m);
            }
            let complete = f.iter().map(|x| x.0).collect();
            (vhd, Flushes { complete, covers })
        })
        .collect();
    let mut ctx = Ctx {
        h,
        crashes,
        flushes,
        out: Vec::new(),
    };
    let mut keys: Vec<(u64, u64)> = writes.keys().chain(reads.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    rep.blocks = keys.len() as u64;
    let empty = Vec::new();
    for key in keys {
        let ws = writes.get(&key).unwrap_or(&empty);
        let rs = reads.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        check_block(&mut ctx, key, ws, rs);
    }
    rep.violations = ctx.out;
    rep
}

fn check_block(ctx: &mut Ctx<'_>, key: (u64, u64), ws: &[W], rs: &[R]) {
    let by_id: HashMap<u64, &W> = ws.iter().map(|w| (w.id, w)).collect();
    // Acknowledged writes by completion, for rule 3.
    let mut acked: Vec<&W> = ws.iter().filter(|w| w.acked).collect();
    acked.sort_unstable_by_key(|w| w.complete);
    let comp: Vec<u64> = acked.iter().map(|w| w.complete).collect();
    let inv: Vec<u64> = acked.iter().map(|w| w.invoke).collect();
    let sparse = Sparse::new(&inv);
    // What each read saw: None = zeroes; reads that broke rule 1 are left out of 3–5.
    let mut judged: Vec<(&R, Option<&W>)> = Vec::new();
    for r in rs {
        let w = match &r.seen {
            Seen::Zero => None,
            Seen::Torn { detail } => {
                if !torn_excused(r, ws, (&acked, &comp, &inv, &sparse)) {
                    ctx.violation("torn", key, detail.clone(), &[r.ev]);
                }
                continue;
            }
            Seen::Misplaced(s) => {
                let d = format!("holds write {} of VHD {} block {}", s.id, s.vhd, s.block);
                ctx.violation("misplaced", key, d, &[r.ev]);
                continue;
            }
            Seen::Stamp(s) => match by_id.get(&s.id) {
                Some(w) if w.generation == s.generation => Some(*w),
                _ => {
                    let d = format!(
                        "write {} (gen {}) is not in the history",
                        s.id, s.generation
                    );
                    ctx.violation("phantom", key, d, &[r.ev]);
                    continue;
                }
            },
        };
        if let Some(w) = w
            && w.invoke > r.complete
        {
            let d = format!("write {} started after the read ended", w.id);
            ctx.violation("future", key, d, &[w.ev, r.ev]);
        }
        register(ctx, key, r, w, (&acked, &comp, &inv, &sparse));
        judged.push((r, w));
    }
    generations(ctx, key, &judged);
    monotonic(ctx, key, &judged);
}

type Acked<'a, 'b> = (&'a [&'b W], &'a [u64], &'a [u64], &'a Sparse);

/// A torn block is a write's business while the write may still be landing: one that
/// overlaps the read in time (storage makes no promise to a read racing a write of the
/// same bytes), or one that ended without an acknowledgement (it may have landed in
/// part) and that no acknowledged write has replaced since.
fn torn_excused(r: &R, ws: &[W], a: Acked<'_, '_>) -> bool {
    let (_, comp, inv, sparse) = a;
    let before = comp.partition_point(|c| *c < r.invoke);
    let newest = sparse.argmax(inv, 0, before).map(|i| inv[i]);
    ws.iter().any(|w| {
        w.invoke < r.complete
            && (w.end > r.invoke || (!w.acked && newest.is_none_or(|n| n <= w.end)))
    })
}

/// Rule 3.
fn register(ctx: &mut Ctx<'_>, key: (u64, u64), r: &R, w: Option<&W>, a: Acked<'_, '_>) {
    let (acked, comp, inv, sparse) = a;
    let x = r.invoke;
    let before_read = comp.partition_point(|c| *c < x);
    let crash = ctx.last_crash_before(x);
    let after_crash = crash.map_or(0, |c| comp.partition_point(|t| *t <= c));
    let end = w.map(|w| w.end);
    let supersedes = |i: usize| end.is_none_or(|e| inv[i] > e);
    // Completed since the last crash and before the read: binding as they are.
    if let Some(i) = sparse.argmax(inv, after_crash, before_read)
        && supersedes(i)
    {
        let d = match w {
            Some(w) => format!(
                "sees write {} although write {} started after it ended and completed before the read",
                w.id, acked[i].id
            ),
            None => format!(
                "sees zeroes although write {} completed before the read",
                acked[i].id
            ),
        };
        let mut evs: Vec<usize> = w.map(|w| w.ev).into_iter().collect();
        evs.extend([acked[i].ev, r.ev]);
        ctx.violation("stale_read", key, d, &evs);
        return;
    }
    // Before the crash: binding only when a flush acknowledged before the read covers it.
    let covered = ctx.flushes.get(&key.0).map_or(0, |f| f.covered_before(x));
    let upto = comp.partition_point(|c| *c < covered).min(after_crash);
    if let Some(i) = sparse.argmax(inv, 0, upto)
        && supersedes(i)
    {
        let d = format!(
            "write {} was acknowledged and flushed, then lost: the read after the crash sees {}",
            acked[i].id,
            w.map_or("zeroes".to_string(), |w| format!("write {}", w.id))
        );
        let mut evs: Vec<usize> = w.map(|w| w.ev).into_iter().collect();
        evs.extend([acked[i].ev, r.ev]);
        ctx.violation("lost_flushed_write", key, d, &evs);
    }
}

/// Reads sorted by completion, and a sweep in invoke order over the reads completed
/// before each one, keeping the one that maximises `score`.
fn sweep<'a, 'b>(
    judged: &'a [(&'b R, Option<&'b W>)],
    score: impl Fn(&R, Option<&W>) -> Option<u64>,
    mut visit: impl FnMut(&'a (&'b R, Option<&'b W>), &'a (&'b R, Option<&'b W>), u64),
) {
    let mut by_complete: Vec<usize> = (0..judged.len()).collect();
    by_complete.sort_unstable_by_key(|i| judged[*i].0.complete);
    let mut by_invoke: Vec<usize> = (0..judged.len()).collect();
    by_invoke.sort_unstable_by_key(|i| judged[*i].0.invoke);
    let mut next = 0;
    let mut best: Option<(u64, usize)> = None;
    for i in by_invoke {
        let (r, _) = judged[i];
        while next < by_complete.len() && judged[by_complete[next]].0.complete < r.invoke {
            let j = by_complete[next];
            if let Some(s) = score(judged[j].0, judged[j].1)
                && best.is_none_or(|(b, _)| s > b)
            {
                best = Some((s, j));
            }
            next += 1;
        }
        if let Some((s, j)) = best {
            visit(&judged[j], &judged[i], s);
        }
    }
}

/// Rule 4.
fn generations(ctx: &mut Ctx<'_>, key: (u64, u64), judged: &[(&R, Option<&W>)]) {
    let mut found = Vec::new();
    sweep(
        judged,
        |_, w| Some(w.map_or(0, |w| w.generation)),
        |(r1, w1), (r2, w2), g1| {
            let g2 = w2.map_or(0, |w| w.generation);
            if g2 < g1 && !ctx.may_be_lost(key.0, *w1, r1.invoke, r2.invoke) {
                found.push((r1.ev, r2.ev, g1, g2));
            }
        },
    );
    for (e1, e2, g1, g2) in found {
        let d = format!("a read sees generation {g2} after a read saw generation {g1}");
        ctx.violation("stale_generation", key, d, &[e1, e2]);
    }
}

/// Rule 5, per client.
fn monotonic(ctx: &mut Ctx<'_>, key: (u64, u64), judged: &[(&R, Option<&W>)]) {
    let mut clients: Vec<u64> = judged.iter().map(|(r, _)| r.client).collect();
    clients.sort_unstable();
    clients.dedup();
    let mut found = Vec::new();
    for c in clients {
        let mine: Vec<(&R, Option<&W>)> = judged
            .iter()
            .filter(|(r, _)| r.client == c)
            .copied()
            .collect();
        sweep(
            &mine,
            |_, w| w.map(|w| w.invoke),
            |(r1, w1), (r2, w2), start1| {
                let back = w2.is_none_or(|w| w.end < start1);
                if back && !ctx.may_be_lost(key.0, *w1, r1.invoke, r2.invoke) {
                    found.push((r1.ev, r2.ev));
                }
            },
        );
    }
    for (e1, e2) in found {
        let d = "a client's read sees a write older than one its earlier read saw".to_string();
        ctx.violation("non_monotonic", key, d, &[e1, e2]);
    }
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
