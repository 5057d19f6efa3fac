//! Admission control for one resource: a book of leases that never grants more than the
//! resource's capacity, reclaims expired leases, and refuses requests from a stale coordinator
//! epoch. Pure logic; the resource actors own one book each.

use std::collections::BTreeMap;

use crate::wire::{Lease, LeaseRequest};

/// Why a lease was not granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("{resource}: asked for {requested} {unit}, only {available} of {capacity} free")]
    Insufficient { resource: String, requested: u64, available: u64, capacity: u64, unit: &'static str },
    #[error("{resource}: request from epoch {epoch} refused, epoch {current} is current")]
    StaleEpoch { resource: String, epoch: u64, current: u64 },
    #[error("{resource}: a lease must ask for at least 1 {unit}")]
    Empty { resource: String, unit: &'static str },
    #[error("{resource}: no lease {id}")]
    Unknown { resource: String, id: String },
    /// The node is measuring itself; a package now would skew the figures and run slowly.
    #[error("{resource}: this node is running a benchmark and takes no new packages until it ends")]
    Benchmarking { resource: String },
}

/// The leases on one resource.
#[derive(Debug, Clone)]
pub struct LeaseBook {
    resource: String,
    unit: &'static str,
    capacity: u64,
    leases: BTreeMap<String, Lease>,
    highest_epoch: u64,
    next_id: u64,
}

impl LeaseBook {
    pub fn new(resource: impl Into<String>, unit: &'static str, capacity: u64) -> Self {
        LeaseBook { resource: resource.into(), unit, capacity, leases: BTreeMap::new(), highest_epoch: 0, next_id: 1 }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Changes the capacity (a rescan or new limits). Live leases stay; if they now exceed the
    /// capacity nothing new is granted until enough are released.
    pub fn set_capacity(&mut self, capacity: u64) {
        self.capacity = capacity;
    }

    /// Amount held by unexpired leases at `now_ms`.
    pub fn leased(&mut self, now_ms: u64) -> u64 {
        self.reclaim(now_ms);
        self.leases.values().map(|l| l.amount).sum()
    }

    pub fn available(&mut self, now_ms: u64) -> u64 {
        let leased = self.leased(now_ms);
        self.capacity.saturating_sub(leased)
    }

    /// Grants a lease if the request fits and its epoch is not stale.
    pub fn grant(&mut self, req: &LeaseRequest, now_ms: u64) -> Result<Lease, LeaseError> {
        if req.epoch < self.highest_epoch {
            return Err(LeaseError::StaleEpoch {
                resource: self.resource.clone(),
                epoch: req.epoch,
                current: self.highest_epoch,
            });
        }
        if req.amount == 0 {
            return Err(LeaseError::Empty { resource: self.resource.clone(), unit: self.unit });
        }
        let available = self.available(now_ms);
        if req.amount > available {
            return Err(LeaseError::Insufficient {
                resource: self.resource.clone(),
                requested: req.amount,
                available,
                capacity: self.capacity,
                unit: self.unit,
            });
        }
        self.highest_epoch = req.epoch;
        let lease = Lease {
            id: format!("{}#{}", self.resource, self.next_id),
            resource: self.resource.clone(),
            amount: req.amount,
            holder: req.holder.clone(),
            expires_at_ms: now_ms.saturating_add(req.ttl_ms),
            epoch: req.epoch,
        };
        self.next_id += 1;
        self.leases.insert(lease.id.clone(), lease.clone());
        Ok(lease)
    }

    /// Extends a live lease; an expired one is gone and must be asked for again.
    pub fn renew(&mut self, id: &str, ttl_ms: u64, now_ms: u64) -> Result<Lease, LeaseError> {
        self.reclaim(now_ms);
        let lease = self
            .leases
            .get_mut(id)
            .ok_or_else(|| LeaseError::Unknown { resource: self.resource.clone(), id: id.to_string() })?;
        lease.expires_at_ms = now_ms.saturating_add(ttl_ms);
        Ok(lease.clone())
    }

    /// Gives a lease back. Releasing twice is an error, so double frees show up.
    pub fn release(&mut self, id: &str) -> Result<Lease, LeaseError> {
        self.leases
            .remove(id)
            .ok_or_else(|| LeaseError::Unknown { resource: self.resource.clone(), id: id.to_string() })
    }

    /// Releases every lease of a holder (a build that ended or died); returns how many.
    pub fn release_holder(&mut self, holder: &str) -> usize {
        let before = self.leases.len();
        self.leases.retain(|_, l| l.holder != holder);
        before - self.leases.len()
    }

    pub fn leases(&mut self, now_ms: u64) -> Vec<Lease> {
        self.reclaim(now_ms);
        self.leases.values().cloned().collect()
    }

    fn reclaim(&mut self, now_ms: u64) {
        self.leases.retain(|_, l| l.expires_at_ms > now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(amount: u64, epoch: u64) -> LeaseRequest {
        LeaseRequest { amount, holder: "b".into(), ttl_ms: 1_000, epoch }
    }

    #[test]
    fn never_grants_more_than_capacity() {
        let mut book = LeaseBook::new("cpu", "cores", 4);
        let a = book.grant(&req(3, 0), 0).expect("fits");
        let err = book.grant(&req(2, 0), 0).expect_err("over capacity");
        assert!(matches!(err, LeaseError::Insufficient { available: 1, .. }));
        book.grant(&req(1, 0), 0).expect("exactly fills");
        assert_eq!(book.available(0), 0);
        book.release(&a.id).expect("release");
        assert_eq!(book.available(0), 3);
        assert!(book.release(&a.id).is_err(), "double release is reported");
    }

    #[test]
    fn expired_leases_are_reclaimed_and_renewal_extends() {
        let mut book = LeaseBook::new("mem", "bytes", 10);
        let a = book.grant(&req(10, 0), 0).expect("fits");
        assert_eq!(book.available(999), 0);
        book.renew(&a.id, 1_000, 900).expect("renew");
        assert_eq!(book.available(1_500), 0);
        assert_eq!(book.available(1_900), 10);
        assert!(book.renew(&a.id, 1_000, 2_000).is_err());
    }

    #[test]
    fn stale_epochs_are_refused() {
        let mut book = LeaseBook::new("cpu", "cores", 8);
        book.grant(&req(1, 5), 0).expect("epoch 5");
        let err = book.grant(&req(1, 4), 0).expect_err("epoch 4 is stale");
        assert!(matches!(err, LeaseError::StaleEpoch { current: 5, .. }));
        book.grant(&req(1, 6), 0).expect("newer epoch");
    }

    #[test]
    fn shrinking_capacity_keeps_live_leases() {
        let mut book = LeaseBook::new("cpu", "cores", 8);
        book.grant(&req(6, 0), 0).expect("fits");
        book.set_capacity(4);
        assert_eq!(book.leases(0).len(), 1);
        assert_eq!(book.available(0), 0);
        assert!(book.grant(&req(1, 0), 0).is_err());
    }

    #[test]
    fn zero_requests_and_holder_release() {
        let mut book = LeaseBook::new("cpu", "cores", 8);
        assert!(matches!(book.grant(&req(0, 0), 0), Err(LeaseError::Empty { .. })));
        book.grant(&req(2, 0), 0).expect("fits");
        book.grant(&req(2, 0), 0).expect("fits");
        assert_eq!(book.release_holder("b"), 2);
        assert_eq!(book.available(0), 8);
    }
}
