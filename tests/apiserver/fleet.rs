//! A large Service for the double: `pods` pods in EndpointSlices of
//! `per_slice` endpoints (the EndpointSlice controller's default is 100),
//! and a [`Flipper`] that flips the readiness of one slice's endpoints over
//! and over, as a large rollout does.
//!
//! Pod *i* is `pod-iiiii`; pod 0 (the sidecar under test, when there is one)
//! has the address given, every other pod one on 127.1.0.0/16. All share one
//! port, as the pods of a Deployment do.

use std::net::{IpAddr, Ipv4Addr};

use serde_json::Value;

use super::ApiServer;

/// How many writes the double keeps while flipping.
pub const HISTORY: usize = 256;

pub struct Fleet {
    pub namespace: String,
    pub service: String,
    pub port: u16,
    pub pods: usize,
    pub per_slice: usize,
    pub first: IpAddr,
}

impl Fleet {
    pub fn pod(i: usize) -> String {
        format!("pod-{i:05}")
    }

    pub fn addr(&self, i: usize) -> IpAddr {
        if i == 0 {
            return self.first;
        }
        assert!(i < 250 * 256, "pod {i}: the fleet's addresses run out");
        IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8))
    }

    pub fn slices(&self) -> usize {
        self.pods.div_ceil(self.per_slice)
    }

    pub fn slice_name(&self, s: usize) -> String {
        format!("{}-{s:03}", self.service)
    }

    /// The pods of slice `s`.
    pub fn members(&self, s: usize) -> std::ops::Range<usize> {
        s * self.per_slice..((s + 1) * self.per_slice).min(self.pods)
    }

    /// Slice `s`, every endpoint ready but those at the `not_ready` offsets
    /// (not ready, not terminating: out of the view).
    pub fn slice(&self, s: usize, not_ready: &[usize]) -> Value {
        let eps: Vec<(String, String, bool, bool, bool)> = self
            .members(s)
            .map(|i| {
                let ready = !not_ready.contains(&(i - s * self.per_slice));
                (Fleet::pod(i), self.addr(i).to_string(), ready, ready, false)
            })
            .collect();
        let eps: Vec<(&str, &str, bool, bool, bool)> = eps
            .iter()
            .map(|(p, a, r, s, t)| (p.as_str(), a.as_str(), *r, *s, *t))
            .collect();
        super::slice(&self.service, &self.slice_name(s), ("http", self.port), &eps)
    }

    /// Writes every slice, all endpoints ready.
    pub fn publish(&self, api: &ApiServer) {
        for s in 0..self.slices() {
            api.set_slice(&self.namespace, self.slice(s, &[]));
        }
    }
}

/// Flips the endpoints of the fleet's last slice one after the other: flip
/// 2k takes endpoint k (modulo the slice's size) out of the view, flip 2k+1
/// brings it back. Every flip is one write of the whole slice, and changes
/// the view.
#[derive(Default)]
pub struct Flipper {
    pub flips: u64,
}

impl Flipper {
    /// The slice that flips.
    pub fn slice(fleet: &Fleet) -> usize {
        fleet.slices() - 1
    }

    /// The pod the last flip took out, or `None` when the last flip brought
    /// it back (or there was none).
    pub fn out(&self, fleet: &Fleet) -> Option<String> {
        (self.flips % 2 == 1)
            .then(|| Fleet::pod(self.offset(fleet, self.flips - 1) + fleet.members(Flipper::slice(fleet)).start))
    }

    fn offset(&self, fleet: &Fleet, flip: u64) -> usize {
        (flip / 2) as usize % fleet.members(Flipper::slice(fleet)).len()
    }

    pub fn flip(&mut self, fleet: &Fleet, api: &ApiServer) {
        let s = Flipper::slice(fleet);
        let out = if self.flips % 2 == 0 {
            vec![self.offset(fleet, self.flips)]
        } else {
            vec![]
        };
        api.set_slice(&fleet.namespace, fleet.slice(s, &out));
        api.trim_history(HISTORY);
        self.flips += 1;
    }
}
