//! Which peers a node keeps a link to: everyone in a small mesh, its row and column of a grid
//! in a large one, and which peer passes a message on to a member it has no link to.
//!
//! Why: with a link to every member, a node of a 200-node mesh holds 199 Noise sessions, sends
//! a keepalive over each and starts 199 dials when it joins; the simulation stalled past ~130
//! nodes. Members are placed on a grid in the order they were admitted (the roster's
//! `issued_at_ms`, then node id), filling it shell by shell — cells (0,0); (0,1) (1,0) (1,1);
//! (0,2) (1,2) (2,0) (2,1) (2,2); … — so a member keeps its cell as others join and every
//! member computes the same grid from the same roster. A member links to the others of its row
//! and column: about 2·√N links. Any two members share a row or column, or one of the two
//! cells where their row and column cross holds a member linked to both (for the filled cells
//! of a shell-by-shell grid, at least one of the two always exists), so a message for a member
//! without a link takes one hop through that relay. ARCHITECTURE.md ("Scale") has the figures.

use std::collections::HashMap;

use crate::wire::{NodeId, RosterEntry};

/// Up to this many members, every member links to every other (what small meshes always did).
pub const FULL_MESH_UP_TO: usize = 8;

/// A cell of the grid: (row, column).
type Cell = (u32, u32);

/// The grid of one roster, as one member computes it.
#[derive(Debug, Default)]
pub struct Topology {
    full_mesh: bool,
    cells: HashMap<NodeId, Cell>,
    at: HashMap<Cell, NodeId>,
}

/// The cell of the `i`th member in admission order: shell `s` holds the cells whose larger
/// coordinate is `s`, column `s` top-down first, then row `s` left to right.
fn cell(i: usize) -> Cell {
    let s = (i as f64).sqrt() as usize;
    // Correct the float square root at the boundaries.
    let s = (s.saturating_sub(1)..=s + 1).rev().find(|s| s * s <= i).unwrap_or(0);
    let k = i - s * s;
    if k < s {
        (k as u32, s as u32)
    } else {
        (s as u32, (k - s) as u32)
    }
}

/// What of a roster the grid depends on (who, in what order of admission, revoked or not),
/// summed without allocating: the same fingerprint means the same grid.
pub fn roster_fingerprint<'a>(members: impl IntoIterator<Item = &'a RosterEntry>) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hasher = BuildHasherDefault::<DefaultHasher>::default();
    members.into_iter().fold(0u64, |sum, e| sum.wrapping_add(hasher.hash_one((&e.node_id, e.issued_at_ms, e.revoked))))
}

impl Topology {
    /// The grid of every member that is not revoked, `me` included.
    pub fn new<'a>(members: impl IntoIterator<Item = &'a RosterEntry>) -> Topology {
        let mut order: Vec<&RosterEntry> = members.into_iter().filter(|e| !e.revoked).collect();
        order.sort_by(|a, b| a.issued_at_ms.cmp(&b.issued_at_ms).then_with(|| a.node_id.cmp(&b.node_id)));
        let mut topology = Topology { full_mesh: order.len() <= FULL_MESH_UP_TO, ..Topology::default() };
        for (i, entry) in order.into_iter().enumerate() {
            let c = cell(i);
            topology.cells.insert(entry.node_id.clone(), c);
            topology.at.insert(c, entry.node_id.clone());
        }
        topology
    }

    /// Members on the grid.
    pub fn members(&self) -> usize {
        self.cells.len()
    }

    /// Whether every member links to every other.
    pub fn full_mesh(&self) -> bool {
        self.full_mesh
    }

    /// Whether `a` and `b` keep a link (the relation is symmetric). A member not on the grid
    /// (not yet in this roster, or revoked) is nobody's neighbour.
    pub fn linked(&self, a: &NodeId, b: &NodeId) -> bool {
        if a == b {
            return false;
        }
        match (self.cells.get(a), self.cells.get(b)) {
            (Some(x), Some(y)) => self.full_mesh || x.0 == y.0 || x.1 == y.1,
            _ => false,
        }
    }

    /// Members linked to both `from` and `to`, which pass a message on between them: the
    /// members at the two cells where their rows and columns cross (one or two of them).
    pub fn relays(&self, from: &NodeId, to: &NodeId) -> Vec<&NodeId> {
        let (Some(a), Some(b)) = (self.cells.get(from), self.cells.get(to)) else { return Vec::new() };
        [(a.0, b.1), (b.0, a.1)].iter().filter_map(|c| self.at.get(c)).filter(|r| *r != from && *r != to).collect()
    }

    /// Whether `from` reached `me` along `me`'s column (else along its row, or neither).
    pub fn same_column(&self, me: &NodeId, from: &NodeId) -> Option<bool> {
        let (a, b) = (self.cells.get(me)?, self.cells.get(from)?);
        match (a.1 == b.1, a.0 == b.0) {
            (true, _) => Some(true),
            (false, true) => Some(false),
            _ => None,
        }
    }

    /// Whether `me`, holding an entry new to it that came from `from` (`None`: fetched, or
    /// written here), passes it on to `other`: along the line `from` is not on (both lines
    /// when `from` is on neither). From an origin's row and column this reaches every member in
    /// two hops: any member shares a line with one of the two cells where its lines cross the
    /// origin's, and at least one of those is filled (see [`Topology::relays`]).
    pub fn passes_on_to(&self, me: &NodeId, from: Option<&NodeId>, other: &NodeId) -> bool {
        match from.and_then(|from| self.same_column(me, from)) {
            Some(column) => self.in_line(me, other, column),
            None => self.linked(me, other),
        }
    }

    /// Whether `other` is in `me`'s row (`row`) or column (`!row`).
    pub fn in_line(&self, me: &NodeId, other: &NodeId, row: bool) -> bool {
        match (self.cells.get(me), self.cells.get(other)) {
            (Some(a), Some(b)) if a != b => {
                if row {
                    a.0 == b.0
                } else {
                    a.1 == b.1
                }
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Role;

    fn member(i: usize) -> RosterEntry {
        RosterEntry {
            node_id: NodeId::parse(&format!("{:016x}", 0xfff - i)).expect("id"),
            name: format!("n{i}"),
            role: Role::Builder,
            ed_public: String::new(),
            noise_public: String::new(),
            address: String::new(),
            issued_at_ms: 1_000 + i as u64,
            revoked: false,
            signature: String::new(),
        }
    }

    #[test]
    fn cells_fill_shell_by_shell_and_never_repeat() {
        let cells: Vec<Cell> = (0..10).map(cell).collect();
        assert_eq!(cells, vec![(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (1, 2), (2, 0), (2, 1), (2, 2), (0, 3)]);
        let many: std::collections::HashSet<Cell> = (0..10_000).map(cell).collect();
        assert_eq!(many.len(), 10_000);
        assert!(many.iter().all(|c| c.0 < 100 && c.1 < 100));
    }

    #[test]
    fn the_roster_fingerprint_changes_with_what_the_grid_depends_on_only() {
        let entries: Vec<_> = (0..20).map(member).collect();
        let print = roster_fingerprint(&entries);
        assert_eq!(roster_fingerprint(entries.iter().rev()), print, "order does not matter");
        let mut renamed = entries.clone();
        renamed[3].name = "another name".into();
        assert_eq!(roster_fingerprint(&renamed), print, "a name does not move anyone");
        let mut revoked = entries.clone();
        revoked[3].revoked = true;
        assert_ne!(roster_fingerprint(&revoked), print);
        let mut readmitted = entries.clone();
        readmitted[3].issued_at_ms += 1;
        assert_ne!(roster_fingerprint(&readmitted), print);
        assert_ne!(roster_fingerprint(&entries[..19]), print);
    }

    #[test]
    fn a_small_mesh_is_a_full_mesh() {
        let entries: Vec<_> = (0..FULL_MESH_UP_TO).map(member).collect();
        let t = Topology::new(&entries);
        assert!(t.full_mesh());
        for a in &entries {
            for b in &entries {
                assert_eq!(t.linked(&a.node_id, &b.node_id), a.node_id != b.node_id);
            }
        }
    }

    #[test]
    fn every_pair_is_linked_or_has_a_relay_linked_to_both() {
        for n in [FULL_MESH_UP_TO + 1, 10, 50, 123, 200, 500] {
            let entries: Vec<_> = (0..n).map(member).collect();
            let t = Topology::new(&entries);
            let bound = 2 * (n as f64).sqrt().ceil() as usize;
            for a in &entries {
                let degree = entries.iter().filter(|b| t.linked(&a.node_id, &b.node_id)).count();
                assert!(degree <= bound, "{n} members: degree {degree} > {bound}");
                for b in entries.iter().filter(|b| b.node_id != a.node_id) {
                    assert_eq!(t.linked(&a.node_id, &b.node_id), t.linked(&b.node_id, &a.node_id));
                    if t.linked(&a.node_id, &b.node_id) {
                        continue;
                    }
                    let relays = t.relays(&a.node_id, &b.node_id);
                    assert!(!relays.is_empty(), "{n} members: no relay between {} and {}", a.name, b.name);
                    for r in relays {
                        assert!(t.linked(&a.node_id, r) && t.linked(r, &b.node_id));
                    }
                }
            }
        }
    }

    #[test]
    fn an_entry_passed_on_along_the_other_line_reaches_everyone_in_two_hops() {
        for n in [FULL_MESH_UP_TO + 1, 10, 50, 123, 200, 500] {
            let entries: Vec<_> = (0..n).map(member).collect();
            let t = Topology::new(&entries);
            let ids: Vec<&NodeId> = entries.iter().map(|e| &e.node_id).collect();
            for origin in [0, n / 3, n - 1].map(|i| ids[i]) {
                // Hop 1: the origin's row and column; hop 2: what each of them passes on.
                let first: Vec<&NodeId> = ids.iter().copied().filter(|x| t.passes_on_to(origin, None, x)).collect();
                let mut copies: HashMap<&NodeId, usize> = first.iter().map(|x| (*x, 1)).collect();
                for relay in &first {
                    for x in ids.iter().copied().filter(|x| x != relay && t.passes_on_to(relay, Some(origin), x)) {
                        *copies.entry(x).or_default() += 1;
                    }
                }
                for x in ids.iter().filter(|x| **x != origin) {
                    let got = copies.get(x).copied().unwrap_or(0);
                    assert!((1..=3).contains(&got), "{n} members: {x} got {got} copies");
                }
            }
        }
    }

    #[test]
    fn a_member_keeps_its_cell_as_others_join_and_the_revoked_leave_the_grid() {
        let entries: Vec<_> = (0..60).map(member).collect();
        let before = Topology::new(&entries[..40]);
        let after = Topology::new(&entries);
        for e in &entries[..40] {
            assert_eq!(before.cells.get(&e.node_id), after.cells.get(&e.node_id));
        }
        let mut revoked = entries.clone();
        revoked[59].revoked = true;
        let t = Topology::new(&revoked);
        assert!(!t.linked(&entries[59].node_id, &entries[0].node_id));
        assert!(t.relays(&entries[0].node_id, &entries[59].node_id).is_empty());
    }
}
