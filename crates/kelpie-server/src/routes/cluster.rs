//! `GET /v1/cluster/nodes`: every node of the cluster as this node sees it
//! (Kelpie's own route; Letta has no cluster). A node running alone lists
//! itself.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Serialize, PartialEq)]
pub struct ClusterNodes {
    /// The node that answered.
    pub node_id: String,
    pub cluster: bool,
    pub nodes: Vec<NodeEntry>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct NodeEntry {
    pub node_id: String,
    /// Transport address; `null` for a node running alone.
    pub advertise: Option<String>,
    /// `joining`, `active`, `draining` or `left`.
    pub status: &'static str,
    /// `live`, `failed` or `left`, judged by the heartbeat age on the
    /// database's clock.
    pub liveness: &'static str,
    pub heartbeat_age_ms: Option<u64>,
    /// Active and live: takes new activations.
    pub routable: bool,
}

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/cluster/nodes", get(nodes)).route("/v1/cluster/nodes/", get(nodes))
}

async fn nodes(State(state): State<AppState>) -> Result<Json<ClusterNodes>, ApiError> {
    let node_id = state.config.node_id.to_string();
    let Some(cluster) = &state.cluster else {
        let alone = NodeEntry {
            node_id: node_id.clone(),
            advertise: None,
            status: "active",
            liveness: "live",
            heartbeat_age_ms: None,
            routable: true,
        };
        return Ok(Json(ClusterNodes { node_id, cluster: false, nodes: vec![alone] }));
    };
    let views = cluster.members().await?;
    let nodes = views
        .into_iter()
        .map(|view| NodeEntry {
            node_id: view.row.node_id.to_string(),
            advertise: Some(view.row.advertise.to_string()),
            status: view.row.status.as_str(),
            liveness: match view.liveness {
                kelpie_cluster::Liveness::Live => "live",
                kelpie_cluster::Liveness::Failed => "failed",
                kelpie_cluster::Liveness::Left => "left",
            },
            heartbeat_age_ms: Some(view.row.heartbeat_age_ms),
            routable: view.routable,
        })
        .collect();
    Ok(Json(ClusterNodes { node_id, cluster: true, nodes }))
}
