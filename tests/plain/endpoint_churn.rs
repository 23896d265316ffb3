//! The Kubernetes endpoint source at scale, against the apiserver double:
//! 5,000 pods in 50 EndpointSlices of 100, one slice flipping readiness.
//! The view follows every flip; the pods of the other slices keep their
//! `Peer`s (the same allocations) from the first list to the end; the source
//! runs on a thread of its own, which stops with its task.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use crate::apiserver::fleet::{Fleet, Flipper, HISTORY};
use crate::apiserver::ApiServer;
use stickyd::endpoints::kubernetes::{self, PortSelector};
use stickyd::endpoints::{EndpointStore, View};
use stickyd::metrics::Metrics;

/// A guard against a hang, not a measure of speed.
const LIMIT: Duration = Duration::from_secs(120);

/// Service `web` in namespace `shop`, on port 8080.
fn fleet(pods: usize, per_slice: usize) -> Fleet {
    Fleet {
        namespace: "shop".into(),
        service: "web".into(),
        port: 8080,
        pods,
        per_slice,
        first: IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

/// The threads of this process named `name`.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

/// Waits for the next swap and returns the view it swapped in.
async fn next_view(store: &EndpointStore, changes: &mut tokio::sync::watch::Receiver<u64>) -> Arc<View> {
    changes.changed().await.expect("the store is alive");
    store.load_full()
}

#[tokio::test]
async fn a_slice_churning_among_5000_pods() {
    tokio::time::timeout(LIMIT, async {
        let api = ApiServer::spawn().await;
        let fleet = fleet(5000, 100);
        fleet.publish(&api);
        let store = EndpointStore::default();
        let metrics = Arc::new(Metrics::default());
        let mut changes = store.changes();
        let threads = threads_named(kubernetes::THREAD_NAME);
        let task = kubernetes::spawn(
            api.client(),
            &fleet.namespace,
            &fleet.service,
            PortSelector::Number(fleet.port),
            store.clone(),
            metrics.clone(),
        );
        let listed = next_view(&store, &mut changes).await;
        assert!(listed.synced);
        assert_eq!(listed.len(), 5000, "the first view is the whole list");
        assert_eq!(
            threads_named(kubernetes::THREAD_NAME),
            threads + 1,
            "the source runs on a thread of its own"
        );

        // More flips than the double keeps history for: it trims as it goes.
        let churn = Flipper::slice(&fleet);
        let mut flipper = Flipper::default();
        let mut view = listed.clone();
        for _ in 0..HISTORY + 44 {
            flipper.flip(&fleet, &api);
            let next = next_view(&store, &mut changes).await;
            assert_eq!(next.generation, view.generation + 1, "one swap per flip");
            view = next;
            match flipper.out(&fleet) {
                Some(pod) => {
                    assert_eq!(view.len(), 4999);
                    assert!(view.peers().by_name(&pod).is_none(), "{pod} is out");
                }
                None => assert_eq!(view.len(), 5000),
            }
        }
        assert_eq!(metrics.kube_watch_errors.get(), 0);

        // The pods of the other 49 slices are the peers of the first list.
        for s in (0..fleet.slices()).filter(|&s| s != churn) {
            for i in fleet.members(s) {
                let pod = Fleet::pod(i);
                let (before, now) = (
                    listed.peers().by_name(&pod).unwrap(),
                    view.peers().by_name(&pod).unwrap(),
                );
                assert!(Arc::ptr_eq(before, now), "{pod} was rebuilt");
            }
        }

        task.abort();
        while threads_named(kubernetes::THREAD_NAME) > threads {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the churn test did not finish in time");
}

/// The double's trimmed history behaves as etcd's compaction: a watch from
/// a forgotten version gets 410 Expired, one from a kept version its writes.
#[tokio::test]
async fn the_double_forgets_trimmed_history() {
    use futures_util::TryStreamExt;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, WatchEvent, WatchParams};

    tokio::time::timeout(LIMIT, async {
        let api = ApiServer::spawn().await;
        let fleet = fleet(30, 10);
        let old = api.resource_version();
        fleet.publish(&api);
        let kept = api.resource_version() - 1;
        api.trim_history(1);
        let slices: Api<EndpointSlice> = Api::namespaced(api.client(), "shop");
        let wp = WatchParams::default().timeout(5);
        let mut events = Box::pin(slices.watch(&wp, &old.to_string()).await.unwrap());
        match events.try_next().await.unwrap() {
            Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
            other => panic!("expected a 410 ERROR, got {other:?}"),
        }
        let mut events = Box::pin(slices.watch(&wp, &kept.to_string()).await.unwrap());
        match events.try_next().await.unwrap() {
            Some(WatchEvent::Added(s)) => assert_eq!(s.metadata.name.as_deref(), Some("web-002")),
            other => panic!("expected the last write, got {other:?}"),
        }
    })
    .await
    .expect("the test did not finish in time");
}
