//! The actors that own a node's resources. DESIGN.md's `CpuActor`, `MemoryActor`,
//! `StorageActor` and `ToolActor` are one type, [`ResourceActor`], told apart by the
//! [`ResourceInfo`] it holds: they differ only in how capacity is counted, and one lease
//! mechanism serving all of them cannot drift apart.
//!
//! The actor is the only authority over its resource: it grants, renews and releases leases and
//! never grants more than the capacity the node offers.

use actix::prelude::*;

use crate::lease::{LeaseBook, LeaseError};
use crate::wire::{self, Lease, LeaseRequest};
pub use crate::wire::{ResourceInfo, ResourceStatus};

/// Owns one resource and its leases.
pub struct ResourceActor {
    info: ResourceInfo,
    book: LeaseBook,
    restarts: u32,
}

impl ResourceActor {
    pub fn new(info: ResourceInfo, offered_cores: usize) -> Self {
        let kind = info.kind();
        let book = LeaseBook::new(info.key(), kind.unit(), info.capacity(offered_cores));
        ResourceActor { info, book, restarts: 0 }
    }
}

impl Actor for ResourceActor {
    type Context = Context<Self>;
}

impl Supervised for ResourceActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The supervisor keeps this value, so leases survive a restart.
        self.restarts += 1;
        log::warn!("resource actor {} restarted ({} so far)", self.info.key(), self.restarts);
    }
}

/// Current state and leases.
#[derive(Message)]
#[rtype(result = "ResourceStatus")]
pub struct GetStatus;

impl Handler<GetStatus> for ResourceActor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        let now = wire::now_ms();
        let leases = self.book.leases(now);
        let leased = leases.iter().map(|l| l.amount).sum();
        MessageResult(ResourceStatus {
            key: self.info.key(),
            kind: self.info.kind(),
            unit: self.info.kind().unit().to_string(),
            capacity: self.book.capacity(),
            leased,
            available: self.book.available(now),
            leases,
            restarts: self.restarts,
            resource: self.info.clone(),
        })
    }
}

/// New facts from a rescan; live leases are kept.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UpdateInfo {
    pub info: ResourceInfo,
    pub offered_cores: usize,
}

impl Handler<UpdateInfo> for ResourceActor {
    type Result = ();

    fn handle(&mut self, msg: UpdateInfo, _: &mut Context<Self>) {
        self.book.set_capacity(msg.info.capacity(msg.offered_cores));
        self.info = msg.info;
    }
}

/// Asks for a lease.
#[derive(Message)]
#[rtype(result = "Result<Lease, LeaseError>")]
pub struct RequestLease {
    pub request: LeaseRequest,
}

impl Handler<RequestLease> for ResourceActor {
    type Result = Result<Lease, LeaseError>;

    fn handle(&mut self, msg: RequestLease, _: &mut Context<Self>) -> Self::Result {
        self.book.grant(&msg.request, wire::now_ms())
    }
}

/// Extends a lease.
#[derive(Message)]
#[rtype(result = "Result<Lease, LeaseError>")]
pub struct RenewLease {
    pub lease_id: String,
    pub ttl_ms: u64,
}

impl Handler<RenewLease> for ResourceActor {
    type Result = Result<Lease, LeaseError>;

    fn handle(&mut self, msg: RenewLease, _: &mut Context<Self>) -> Self::Result {
        self.book.renew(&msg.lease_id, msg.ttl_ms, wire::now_ms())
    }
}

/// Gives a lease back.
#[derive(Message)]
#[rtype(result = "Result<Lease, LeaseError>")]
pub struct ReleaseLease {
    pub lease_id: String,
}

impl Handler<ReleaseLease> for ResourceActor {
    type Result = Result<Lease, LeaseError>;

    fn handle(&mut self, msg: ReleaseLease, _: &mut Context<Self>) -> Self::Result {
        self.book.release(&msg.lease_id)
    }
}

/// Stops the actor as a failure would; its supervisor restarts it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Fail;

impl Handler<Fail> for ResourceActor {
    type Result = ();

    fn handle(&mut self, _: Fail, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{CpuInfo, ToolInfo};

    fn cpu(offered: usize) -> ResourceInfo {
        ResourceInfo::Cpu(CpuInfo {
            count: 8,
            physical_count: Some(4),
            offered,
            architecture: "x86_64".into(),
            model: "test".into(),
            frequency_mhz: 1000,
            features: vec![],
        })
    }

    fn req(amount: u64) -> RequestLease {
        RequestLease { request: LeaseRequest { amount, holder: "t".into(), ttl_ms: 60_000, epoch: 0 } }
    }

    #[actix::test]
    async fn concurrent_requests_never_overcommit() {
        let addr = ResourceActor::new(cpu(4), 4).start();
        let requests: Vec<_> = (0..32).map(|_| addr.send(req(1))).collect();
        let results = futures_util::future::join_all(requests).await;
        let granted = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(granted, 4);
        let status = addr.send(GetStatus).await.expect("status");
        assert_eq!((status.capacity, status.leased, status.available), (4, 4, 0));
    }

    #[actix::test]
    async fn supervisor_restarts_and_leases_survive() {
        let addr = Supervisor::start(|_| ResourceActor::new(cpu(4), 4));
        addr.send(req(3)).await.expect("mailbox").expect("granted");
        addr.do_send(Fail);
        addr.do_send(Fail);
        let status = addr.send(GetStatus).await.expect("restarted actor answers");
        assert_eq!(status.restarts, 2);
        assert_eq!(status.leased, 3);
    }

    #[actix::test]
    async fn rescan_keeps_leases() {
        let addr = ResourceActor::new(cpu(4), 4).start();
        addr.send(req(2)).await.expect("mailbox").expect("granted");
        addr.send(UpdateInfo { info: cpu(6), offered_cores: 6 }).await.expect("update");
        let status = addr.send(GetStatus).await.expect("status");
        assert_eq!((status.capacity, status.leased, status.available), (6, 2, 4));
    }

    #[test]
    fn broken_tools_have_no_capacity() {
        let tool = |error: Option<String>| {
            ResourceInfo::Tool(ToolInfo {
                name: "gcc".into(),
                path: "/usr/bin/gcc".into(),
                version: None,
                version_output: None,
                capabilities: vec![],
                error,
            })
        };
        assert_eq!(tool(None).capacity(4), 4);
        assert_eq!(tool(Some("hung".into())).capacity(4), 0);
        assert_eq!(tool(None).key(), "tool:gcc");
    }
}
