//! Per-IP rate limits on what an outsider reaches without a key: joining the mesh and logging
//! in. A token bucket per source address: a burst, then one attempt per interval, then 429 with
//! `Retry-After`. The table is bounded, so a spread of addresses costs memory only up to a cap.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse};

use super::error::{ErrorBody, ErrorDetail};

/// Sources remembered at most; past it, buckets that have refilled are forgotten first.
const MAX_SOURCES: usize = 10_000;

pub struct RateLimit {
    what: &'static str,
    burst: f64,
    every: Duration,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// `burst` attempts at once, then one per `every`.
    pub fn new(what: &'static str, burst: u32, every: Duration) -> RateLimit {
        RateLimit { what, burst: f64::from(burst), every, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one attempt for `ip`; `Err` holds how long until the next is allowed.
    pub fn take(&self, ip: IpAddr) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let rate = 1.0 / self.every.as_secs_f64();
        if buckets.len() >= MAX_SOURCES && !buckets.contains_key(&ip) {
            let burst = self.burst;
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= MAX_SOURCES {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(ip).or_insert(Bucket { tokens: self.burst, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// Checks the request's source; `Err` says who is over the limit and for how long.
    pub fn check(&self, req: &HttpRequest) -> Result<(), Limited> {
        let Some(ip) = req.peer_addr().map(|a| a.ip()) else { return Ok(()) };
        self.take(ip).map_err(|wait| Limited { ip, what: self.what, retry_after_secs: wait.as_secs() + 1 })
    }
}

/// A source over its limit.
pub struct Limited {
    pub ip: IpAddr,
    what: &'static str,
    pub retry_after_secs: u64,
}

impl Limited {
    /// The API's answer: 429, JSON, with `Retry-After`.
    pub fn response(&self) -> HttpResponse {
        let message = format!("too many {} attempts from {}; retry in {} s", self.what, self.ip, self.retry_after_secs);
        let body = ErrorBody { error: ErrorDetail { code: "rate_limited".into(), message } };
        HttpResponse::build(StatusCode::TOO_MANY_REQUESTS)
            .insert_header((header::RETRY_AFTER, self.retry_after_secs.to_string()))
            .json(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval_per_source() {
        let limit = RateLimit::new("join", 3, Duration::from_secs(60));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"));
        for _ in 0..3 {
            limit.take(a).expect("within the burst");
        }
        let wait = limit.take(a).expect_err("over the burst");
        assert!(wait > Duration::from_secs(50) && wait <= Duration::from_secs(60), "{wait:?}");
        limit.take(b).expect("another source has its own bucket");
    }

    #[test]
    fn the_table_stays_bounded() {
        let limit = RateLimit::new("join", 1, Duration::from_secs(60));
        for i in 0..(MAX_SOURCES as u32 + 50) {
            let _ = limit.take(IpAddr::from(i.to_be_bytes()));
        }
        assert!(limit.buckets.lock().expect("lock").len() <= MAX_SOURCES);
    }
}
