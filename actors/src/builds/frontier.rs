//! A build's frontier: which packages may start now. Each package keeps a count of its
//! unfinished dependencies and a list of its dependents, so a package ending touches only its
//! dependents — a 10,000-package build does not rescan every package (and look each dependency
//! up by name) after each one ends, as walking the whole order did.

use std::collections::{BTreeSet, HashMap};

/// Packages by position in the build order, with what each still waits for.
#[derive(Debug, Default)]
pub struct Frontier {
    position: HashMap<String, usize>,
    dependents: Vec<Vec<usize>>,
    /// Dependencies of each package that have not finished yet.
    waiting_on: Vec<usize>,
    /// Whether each package has been handed out (to run) or settled (finished, skipped).
    taken: Vec<bool>,
    /// Packages whose dependencies all succeeded and which were not handed out yet, in order.
    ready: BTreeSet<usize>,
    /// Packages not finished yet.
    open: usize,
    /// Packages neither handed out nor settled yet.
    untaken: usize,
}

impl Frontier {
    /// `order` is the build order; `deps` names a package's dependencies. A dependency that is
    /// not in the order is not waited for (as before: only packages of the build are).
    pub fn new<'a>(order: &[String], deps: impl Fn(&str) -> &'a [String]) -> Frontier {
        let position: HashMap<String, usize> = order.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        let mut dependents = vec![Vec::new(); order.len()];
        let mut waiting_on = vec![0; order.len()];
        for (i, name) in order.iter().enumerate() {
            let mut seen = BTreeSet::new();
            for d in deps(name).iter().filter_map(|d| position.get(d)) {
                if seen.insert(*d) {
                    dependents[*d].push(i);
                    waiting_on[i] += 1;
                }
            }
        }
        let ready = (0..order.len()).filter(|i| waiting_on[*i] == 0).collect();
        let n = order.len();
        Frontier { position, dependents, waiting_on, taken: vec![false; n], ready, open: n, untaken: n }
    }

    /// Where `name` stands in the build order.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.position.get(name).copied()
    }

    /// Packages that may start now, in build order; each is handed out once.
    pub fn take_ready(&mut self) -> Vec<usize> {
        let ready = std::mem::take(&mut self.ready);
        for i in &ready {
            self.take(*i);
        }
        ready.into_iter().collect()
    }

    /// Records that package `i` finished (`ok`: succeeded or cached). A failure settles every
    /// package depending on it, transitively; those are returned, in build order, for the caller
    /// to mark skipped.
    pub fn finish(&mut self, i: usize, ok: bool) -> Vec<usize> {
        if i >= self.taken.len() {
            return Vec::new();
        }
        self.take(i);
        self.ready.remove(&i);
        self.open = self.open.saturating_sub(1);
        if ok {
            for &d in &self.dependents[i] {
                self.waiting_on[d] = self.waiting_on[d].saturating_sub(1);
                if self.waiting_on[d] == 0 && !self.taken[d] {
                    self.ready.insert(d);
                }
            }
            return Vec::new();
        }
        let mut skipped = BTreeSet::new();
        let mut stack = self.dependents[i].clone();
        while let Some(d) = stack.pop() {
            if !self.taken[d] {
                self.take(d);
                self.ready.remove(&d);
                self.open = self.open.saturating_sub(1);
                skipped.insert(d);
                stack.extend(self.dependents[d].iter().copied());
            }
        }
        skipped.into_iter().collect()
    }

    /// Settles every package not handed out yet (a cancelled build); returns them in order.
    pub fn settle_pending(&mut self) -> Vec<usize> {
        let pending: Vec<usize> = (0..self.taken.len()).filter(|i| !self.taken[*i]).collect();
        for i in &pending {
            self.take(*i);
        }
        self.ready.clear();
        self.open = self.open.saturating_sub(pending.len());
        pending
    }

    /// Marks package `i` handed out or settled.
    fn take(&mut self, i: usize) {
        if !std::mem::replace(&mut self.taken[i], true) {
            self.untaken -= 1;
        }
    }

    /// Whether every package has been handed out or settled: what is left of the build is
    /// running (or waiting for room) and nothing more will start.
    pub fn all_handed_out(&self) -> bool {
        self.untaken == 0
    }

    /// Whether every package has finished or been settled.
    pub fn done(&self) -> bool {
        self.open == 0
    }

    /// The share of packages finished or settled, 0.0–1.0.
    pub fn progress(&self) -> f64 {
        let total = self.taken.len().max(1);
        (self.taken.len() - self.open) as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frontier(edges: &[(&str, &[&str])]) -> Frontier {
        let order: Vec<String> = edges.iter().map(|(n, _)| n.to_string()).collect();
        let deps: HashMap<String, Vec<String>> =
            edges.iter().map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect())).collect();
        let deps = Box::leak(Box::new(deps));
        Frontier::new(&order, |n| deps.get(n).map(Vec::as_slice).unwrap_or_default())
    }

    #[test]
    fn packages_start_once_their_dependencies_succeeded() {
        // a, b → c; c → d; e alone; "z" is not in the build and is not waited for.
        let mut f = frontier(&[("a", &[]), ("b", &[]), ("c", &["a", "b", "a"]), ("d", &["c", "z"]), ("e", &[])]);
        assert_eq!(f.take_ready(), vec![0, 1, 4]);
        assert!(f.take_ready().is_empty(), "each package is handed out once");
        assert!(f.finish(0, true).is_empty());
        assert!(f.take_ready().is_empty(), "c still waits for b");
        f.finish(1, true);
        assert_eq!(f.take_ready(), vec![2]);
        f.finish(2, true);
        assert!(!f.all_handed_out(), "d waits for c");
        assert_eq!(f.take_ready(), vec![3]);
        assert!(f.all_handed_out(), "d, the last, is out; e runs");
        f.finish(3, true);
        assert!(!f.done(), "e is still running");
        f.finish(4, true);
        assert!(f.done());
    }

    #[test]
    fn a_failure_skips_its_dependents_transitively_and_nothing_else() {
        let mut f = frontier(&[("a", &[]), ("b", &["a"]), ("c", &["b"]), ("d", &[]), ("e", &["d", "c"])]);
        assert_eq!(f.take_ready(), vec![0, 3]);
        assert!(!f.all_handed_out());
        assert_eq!(f.finish(0, false), vec![1, 2, 4]);
        assert!(f.all_handed_out(), "what was skipped is settled");
        assert!(!f.done(), "d still runs");
        assert!(f.finish(3, true).is_empty());
        assert!(f.take_ready().is_empty(), "e was skipped, not readied");
        assert!(f.done());
    }

    #[test]
    fn cancelling_settles_what_has_not_started() {
        let mut f = frontier(&[("a", &[]), ("b", &["a"]), ("c", &[])]);
        assert_eq!(f.take_ready(), vec![0, 2]);
        assert_eq!(f.settle_pending(), vec![1]);
        assert!(f.all_handed_out());
        f.finish(0, true);
        assert!(f.take_ready().is_empty(), "a settled package never becomes ready");
        f.finish(2, false);
        assert!(f.done());
    }
}
