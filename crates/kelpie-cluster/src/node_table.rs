//! The node table in PostgreSQL (`kelpie_nodes`): one row per node with its
//! advertised address, status and last heartbeat. Heartbeats are stamped and
//! their ages measured with the database's clock (`clock_timestamp()`), so
//! failure detection never compares two nodes' clocks. An I/O shell: it
//! reads and writes rows; [`crate::membership`] decides. It is the
//! PostgreSQL [`NodeStore`].

use std::net::SocketAddr;

use deadpool_postgres::Pool;
use kelpie_core::env::BoxFuture;
use kelpie_core::NodeId;

use crate::error::{ClusterError, ClusterResult};
use crate::membership::{NodeRow, NodeStatus};
use crate::node_store::NodeStore;

/// Connections one node keeps to the node table: heartbeats and views only.
pub const NODE_TABLE_POOL_CONNECTIONS_COUNT_MAX: usize = 4;

/// Most rows one view reads; a cluster is far smaller.
pub const NODE_TABLE_ROWS_COUNT_MAX: i64 = 1_024;

/// Advisory lock keys serializing schema creation (apart from storage's).
const NODE_TABLE_MIGRATION_LOCK_KEYS: (i32, i32) = (0x6b_65_6c_70, 2);

const NODE_TABLE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kelpie_nodes (
    node_id TEXT PRIMARY KEY,
    advertise TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('joining', 'active', 'draining', 'left')),
    last_heartbeat TIMESTAMPTZ NOT NULL
);
";

fn db_error(operation: &'static str) -> impl Fn(tokio_postgres::Error) -> ClusterError {
    move |err| {
        let reason = match err.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => err.to_string(),
        };
        ClusterError::Database { operation, reason }
    }
}

#[derive(Clone)]
pub struct NodeTable {
    pool: Pool,
}

impl NodeTable {
    /// Connects to `url` and creates the table if it does not exist.
    pub async fn connect(url: &str) -> ClusterResult<Self> {
        let pool = kelpie_storage::connect_pool(url, NODE_TABLE_POOL_CONNECTIONS_COUNT_MAX)
            .map_err(|err| ClusterError::Database { operation: "create pool", reason: err.to_string() })?;
        let table = NodeTable { pool };
        table.migrate().await?;
        Ok(table)
    }

    async fn client(&self) -> ClusterResult<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|err| ClusterError::Database { operation: "connect", reason: err.to_string() })
    }

    async fn migrate(&self) -> ClusterResult<()> {
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(db_error("migrate"))?;
        let (high, low) = NODE_TABLE_MIGRATION_LOCK_KEYS;
        txn.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&high, &low])
            .await
            .map_err(db_error("migrate lock"))?;
        txn.batch_execute(NODE_TABLE_SCHEMA).await.map_err(db_error("create node table"))?;
        txn.commit().await.map_err(db_error("migrate commit"))
    }

    /// Upserts the node's row with `status`, heartbeat stamped now by the database.
    pub async fn write(
        &self,
        node_id: &NodeId,
        advertise: SocketAddr,
        status: NodeStatus,
    ) -> ClusterResult<()> {
        let client = self.client().await?;
        let advertise = advertise.to_string();
        let written = client
            .execute(
                "INSERT INTO kelpie_nodes (node_id, advertise, status, last_heartbeat)
                 VALUES ($1, $2, $3, clock_timestamp())
                 ON CONFLICT (node_id) DO UPDATE SET advertise = EXCLUDED.advertise,
                     status = EXCLUDED.status, last_heartbeat = EXCLUDED.last_heartbeat",
                &[&node_id.as_str(), &advertise, &status.as_str()],
            )
            .await
            .map_err(db_error("heartbeat write"))?;
        assert_eq!(written, 1, "an upsert writes exactly one row");
        Ok(())
    }

    /// Every row, ordered by node id, heartbeat ages on the database's clock.
    pub async fn rows(&self) -> ClusterResult<Vec<NodeRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT node_id, advertise, status,
                        GREATEST(0, floor(extract(epoch FROM clock_timestamp() - last_heartbeat) * 1000))::BIGINT
                 FROM kelpie_nodes ORDER BY node_id LIMIT $1",
                &[&NODE_TABLE_ROWS_COUNT_MAX],
            )
            .await
            .map_err(db_error("node table read"))?;
        rows.iter().map(parse_row).collect()
    }
}

impl NodeStore for NodeTable {
    fn write(
        &self,
        node_id: NodeId,
        advertise: SocketAddr,
        status: NodeStatus,
    ) -> BoxFuture<ClusterResult<()>> {
        let table = self.clone();
        Box::pin(async move { NodeTable::write(&table, &node_id, advertise, status).await })
    }

    fn rows(&self) -> BoxFuture<ClusterResult<Vec<NodeRow>>> {
        let table = self.clone();
        Box::pin(async move { NodeTable::rows(&table).await })
    }
}

fn parse_row(row: &tokio_postgres::Row) -> ClusterResult<NodeRow> {
    let id: String = row.get(0);
    let corrupt = |reason: String| ClusterError::CorruptRow { what: format!("kelpie_nodes[{id}]"), reason };
    let node_id = NodeId::new(id.clone()).map_err(|err| corrupt(err.to_string()))?;
    let advertise_text: String = row.get(1);
    let advertise = advertise_text.parse().map_err(|_| corrupt(format!("advertise {advertise_text:?}")))?;
    let status_text: String = row.get(2);
    let status = NodeStatus::parse(&status_text).ok_or_else(|| corrupt(format!("status {status_text:?}")))?;
    let age: i64 = row.get(3);
    let heartbeat_age_ms = u64::try_from(age).map_err(|_| corrupt(format!("heartbeat age {age}")))?;
    Ok(NodeRow { node_id, advertise, status, heartbeat_age_ms })
}
