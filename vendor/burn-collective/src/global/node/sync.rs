// Patched copy (virtex-rs): upstream 0.21.0 cleared a *copy* of `syncing_peers`, so after the
// first sync every later one returned at once or waited forever; see vendor/README.md.
use std::{
    collections::HashMap,
    marker::PhantomData,
    sync::{Arc, Mutex},
};

use burn_communication::{CommunicationChannel, Message, Protocol, ProtocolClient};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, RwLock};

use crate::{NodeId, node::base::NodeState};

/// Handles the status of sync requests from other nodes
pub(crate) struct SyncService<P: Protocol> {
    /// Current node's state, shared with the thread that does aggregations
    node_state: Arc<RwLock<Option<NodeState>>>,
    /// How many sync requests each node (this one included) has sent that no completed sync has
    /// consumed yet. A count, not a set: a fast peer may already request the *next* sync before
    /// this node has finished the current one, and that request must not be lost.
    syncing_peers: Mutex<HashMap<NodeId, usize>>,
    /// Notification on each incoming sync request
    sync_notif: Notify,

    _p: PhantomData<P>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SyncRequest(NodeId);

impl<P: Protocol> SyncService<P> {
    pub fn new(node_state: Arc<RwLock<Option<NodeState>>>) -> Self {
        Self {
            node_state,
            syncing_peers: Mutex::new(HashMap::new()),
            sync_notif: Notify::new(),
            _p: PhantomData,
        }
    }

    fn add_syncing_peer(&self, peer: NodeId) {
        let mut syncing_peers = self.syncing_peers.lock().unwrap();
        *syncing_peers.entry(peer).or_insert(0) += 1;
    }

    /// Sync with all peers.
    pub async fn sync(&self) {
        // we can't sync while we register
        let node_state = self.node_state.read().await;
        let node_state = node_state
            .as_ref()
            .expect("Trying to sync a node before having registered to the orchestrator");

        // this peer is syncing
        self.add_syncing_peer(node_state.node_id);
        for (id, addr) in &node_state.nodes {
            if *id == node_state.node_id {
                continue;
            }

            let mut connection = P::Client::connect(addr.clone(), "sync")
                .await
                .expect("Couldn't connect to peer for sync");
            let msg = SyncRequest(node_state.node_id);
            let sync_bytes = rmp_serde::to_vec(&msg).unwrap();
            connection
                .send(Message::new(sync_bytes.into()))
                .await
                .expect("Peer closed connection unexpectedly");
        }
        loop {
            // Register interest before checking, so a request arriving between the check and
            // the wait still wakes us (`notify_waiters` stores no permit).
            let notified = self.sync_notif.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut syncing_peers = self.syncing_peers.lock().unwrap();
                let all_synced = node_state
                    .nodes
                    .keys()
                    .all(|id| syncing_peers.get(id).is_some_and(|count| *count > 0));
                if all_synced {
                    // Consume exactly one request per node: this sync is complete, and any
                    // request beyond it belongs to the next sync.
                    for id in node_state.nodes.keys() {
                        if let Some(count) = syncing_peers.get_mut(id) {
                            *count -= 1;
                        }
                    }
                    return;
                }
            }
            // Wait for the next sync to come in
            notified.await;
        }
    }

    pub async fn handle_sync_connection<C: CommunicationChannel>(&self, mut channel: C) {
        let msg = channel.recv().await.unwrap();
        let Some(msg) = msg else {
            return;
        };

        let msg = rmp_serde::from_slice::<SyncRequest>(&msg.data).unwrap();

        self.add_syncing_peer(msg.0);

        self.sync_notif.notify_waiters();
    }
}
