//! The PostgreSQL backend: shared by every node of a cluster.
//!
//! Atomicity across processes comes from PostgreSQL itself: every mutation
//! of an actor (commit, placement put, claim) runs in one SQL transaction
//! that first takes a transaction-scoped advisory lock on the actor. While it
//! holds the lock no other mutation of that actor can run, so the state it
//! observes for validation (read versions, scanned rows, the placement for
//! the fence) cannot change before its writes commit; READ COMMITTED is
//! enough because each statement after the lock sees every earlier commit.
//! Commit versions come from one sequence, so they grow across all nodes.
//!
//! The schema is created or migrated on connect, under a global advisory lock
//! so nodes starting together do not race.
//!
//! Leases: a placement row may carry `lease_expires_at`, written and judged
//! only through [`PostgresBackend::update_leased_placement`], which reads the
//! database's own clock (`clock_timestamp()`) under the same actor lock that
//! fenced commits take. The decision itself is the caller's (the registry's
//! lease state machine); this backend only supplies the row and the time and
//! stores the result atomically. A placement written without a lease (`put`,
//! `claim`) clears any lease left on the row.

use std::ops::Bound;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use kelpie_core::{ActorId, Error, NodeId, Result};
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

use crate::backend::{Backend, BoxFut};
use crate::commit_check::{check_commit, CommitObservation};
use crate::limits::{
    POSTGRES_CONNECT_TIMEOUT_MS, POSTGRES_POOL_CONNECTIONS_COUNT_MAX, POSTGRES_POOL_WAIT_TIMEOUT_MS,
    POSTGRES_TCP_USER_TIMEOUT_MS, SCAN_ROWS_COUNT_MAX,
};
use crate::placement::{check_put, decide_claim};
use crate::types::{
    ClaimOutcome, CommitInfo, CommitRequest, Placement, ScanOrder, ScanPage, StoredRows, Versioned,
};

/// The schema version this code writes and understands.
const SCHEMA_VERSION: i32 = 1;

/// Advisory lock keys (two-int form, a key space apart from the per-actor
/// one-bigint locks) serializing schema migrations.
const MIGRATION_LOCK_KEYS: (i32, i32) = (0x6b_65_6c_70, 1);

const SCHEMA_STATEMENTS: &str = "
CREATE TABLE IF NOT EXISTS kelpie_schema (
    id INT PRIMARY KEY CHECK (id = 1),
    version INT NOT NULL
);
CREATE TABLE IF NOT EXISTS kelpie_kv (
    actor_id TEXT NOT NULL,
    key BYTEA NOT NULL,
    value BYTEA NOT NULL,
    version BIGINT NOT NULL CHECK (version > 0),
    PRIMARY KEY (actor_id, key)
);
CREATE TABLE IF NOT EXISTS kelpie_placements (
    actor_id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    epoch BIGINT NOT NULL CHECK (epoch > 0)
);
ALTER TABLE kelpie_placements ADD COLUMN IF NOT EXISTS lease_expires_at TIMESTAMPTZ;
CREATE SEQUENCE IF NOT EXISTS kelpie_commit_version;
";

fn pg_error(operation: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |err| {
        let reason = match err.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => err.to_string(),
        };
        Error::StorageIo { operation, reason }
    }
}

fn to_u64(value: i64, location: &str) -> Result<u64> {
    u64::try_from(value).ok().filter(|value| *value > 0).ok_or_else(|| Error::Corruption {
        location: location.to_string(),
        reason: format!("non-positive version or epoch {value}"),
    })
}

fn to_i64(value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::validation("placement.epoch", format!("{value} exceeds i64")))
}

/// A pool of at most `size` connections to `url` (a `postgres://` URL or
/// key=value string) whose every wait is bounded: connecting
/// ([`POSTGRES_CONNECT_TIMEOUT_MS`]), waiting for a pooled connection
/// ([`POSTGRES_POOL_WAIT_TIMEOUT_MS`]) and unacknowledged traffic on an open
/// one ([`POSTGRES_TCP_USER_TIMEOUT_MS`]), so a cut-off database fails
/// calls instead of hanging them. Connects lazily.
pub fn connect_pool(url: &str, size: usize) -> Result<Pool> {
    let mut config = tokio_postgres::Config::from_str(url)
        .map_err(|err| Error::validation("database_url", err.to_string()))?;
    config
        .connect_timeout(Duration::from_millis(POSTGRES_CONNECT_TIMEOUT_MS))
        .tcp_user_timeout(Duration::from_millis(POSTGRES_TCP_USER_TIMEOUT_MS))
        .keepalives(true);
    let manager =
        Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let wait = Some(Duration::from_millis(POSTGRES_POOL_WAIT_TIMEOUT_MS));
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(wait)
        .create_timeout(wait)
        .build()
        .map_err(|err| Error::StorageIo { operation: "create pool", reason: err.to_string() })
}

/// The backend handle: a pool of connections to one database.
pub struct PostgresBackend {
    pool: Pool,
}

impl PostgresBackend {
    /// Connects to `url` (a `postgres://` URL or key=value string) and
    /// creates or migrates the schema.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_sized(url, POSTGRES_POOL_CONNECTIONS_COUNT_MAX).await
    }

    /// [`Self::connect`] with at most `pool_size` connections open.
    pub async fn connect_sized(url: &str, pool_size: usize) -> Result<Self> {
        assert!(pool_size > 0, "a pool holds a connection");
        let pool = connect_pool(url, pool_size)?;
        let backend = PostgresBackend { pool };
        backend.migrate().await?;
        Ok(backend)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|err| Error::StorageIo { operation: "connect", reason: err.to_string() })
    }

    async fn migrate(&self) -> Result<()> {
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(pg_error("migrate"))?;
        txn.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&MIGRATION_LOCK_KEYS.0, &MIGRATION_LOCK_KEYS.1],
        )
        .await
        .map_err(pg_error("migrate lock"))?;
        txn.batch_execute(SCHEMA_STATEMENTS).await.map_err(pg_error("create schema"))?;
        let row = txn
            .query_opt("SELECT version FROM kelpie_schema WHERE id = 1", &[])
            .await
            .map_err(pg_error("read schema version"))?;
        match row.map(|row| row.get::<_, i32>(0)) {
            None => {
                txn.execute("INSERT INTO kelpie_schema (id, version) VALUES (1, $1)", &[&SCHEMA_VERSION])
                    .await
                    .map_err(pg_error("write schema version"))?;
            }
            Some(found) if found > SCHEMA_VERSION => {
                return Err(Error::StorageIo {
                    operation: "migrate",
                    reason: format!(
                        "database schema version {found} is newer than this build's {SCHEMA_VERSION}"
                    ),
                });
            }
            Some(_) => {}
        }
        txn.commit().await.map_err(pg_error("migrate commit"))
    }
}

/// Takes the actor's mutation lock for the rest of the SQL transaction.
async fn lock_actor(txn: &deadpool_postgres::Transaction<'_>, actor: &str) -> Result<()> {
    txn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&actor])
        .await
        .map_err(pg_error("lock actor"))?;
    Ok(())
}

async fn placement_in(
    client: &impl deadpool_postgres::GenericClient,
    actor: &ActorId,
) -> Result<Option<Placement>> {
    let row = client
        .query_opt("SELECT node_id, epoch FROM kelpie_placements WHERE actor_id = $1", &[&actor.to_string()])
        .await
        .map_err(pg_error("placement read"))?;
    let Some(row) = row else { return Ok(None) };
    let location = format!("placement of {actor}");
    let node_id = NodeId::new(row.get::<_, String>(0))
        .map_err(|err| Error::Corruption { location: location.clone(), reason: err.to_string() })?;
    Ok(Some(Placement { actor_id: actor.clone(), node_id, epoch: to_u64(row.get(1), &location)? }))
}

async fn store_placement(txn: &deadpool_postgres::Transaction<'_>, placement: &Placement) -> Result<()> {
    txn.execute(
        "INSERT INTO kelpie_placements (actor_id, node_id, epoch) VALUES ($1, $2, $3)
         ON CONFLICT (actor_id) DO UPDATE
         SET node_id = EXCLUDED.node_id, epoch = EXCLUDED.epoch, lease_expires_at = NULL",
        &[&placement.actor_id.to_string(), &placement.node_id.as_str(), &to_i64(placement.epoch)?],
    )
    .await
    .map_err(pg_error("placement write"))?;
    Ok(())
}

/// A placement row with its lease. Instants are milliseconds since the Unix
/// epoch on the database's clock, never a node's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedPlacement {
    pub placement: Placement,
    /// `None`: nobody holds a lease (released, or written without one).
    pub lease_expires_at_ms: Option<u64>,
}

/// The database's clock in whole milliseconds since the Unix epoch.
/// `clock_timestamp()`, not `now()`: the time when the statement runs, after
/// the actor lock was granted, not when the SQL transaction began.
const DB_NOW_MS_SQL: &str = "floor(extract(epoch FROM clock_timestamp()) * 1000)::BIGINT";

/// The actor's placement with its lease, and the database's time, read in one
/// statement so the time is never older than the row.
async fn leased_placement_in(
    client: &impl deadpool_postgres::GenericClient,
    actor: &ActorId,
) -> Result<(Option<LeasedPlacement>, u64)> {
    let sql = format!(
        "SELECT p.node_id, p.epoch, (extract(epoch FROM p.lease_expires_at) * 1000)::BIGINT, {DB_NOW_MS_SQL}
         FROM (SELECT 1) AS one LEFT JOIN kelpie_placements p ON p.actor_id = $1"
    );
    let row = client.query_one(sql.as_str(), &[&actor.to_string()]).await.map_err(pg_error("lease read"))?;
    let location = format!("leased placement of {actor}");
    let now_ms = u64::try_from(row.get::<_, i64>(3)).map_err(|_| Error::Corruption {
        location: "database clock".to_string(),
        reason: "clock_timestamp() before 1970".to_string(),
    })?;
    let Some(node_id) = row.get::<_, Option<String>>(0) else { return Ok((None, now_ms)) };
    let node_id = NodeId::new(node_id)
        .map_err(|err| Error::Corruption { location: location.clone(), reason: err.to_string() })?;
    let epoch = to_u64(row.get(1), &location)?;
    let lease_expires_at_ms = row.get::<_, Option<i64>>(2).map(|ms| to_u64(ms, &location)).transpose()?;
    let placement = Placement { actor_id: actor.clone(), node_id, epoch };
    Ok((Some(LeasedPlacement { placement, lease_expires_at_ms }), now_ms))
}

async fn store_leased_placement(
    txn: &deadpool_postgres::Transaction<'_>,
    leased: &LeasedPlacement,
) -> Result<()> {
    let placement = &leased.placement;
    let expires_ms = leased.lease_expires_at_ms.map(to_i64).transpose()?;
    txn.execute(
        "INSERT INTO kelpie_placements (actor_id, node_id, epoch, lease_expires_at)
         VALUES ($1, $2, $3, 'epoch'::TIMESTAMPTZ + $4::BIGINT * INTERVAL '1 millisecond')
         ON CONFLICT (actor_id) DO UPDATE SET node_id = EXCLUDED.node_id, epoch = EXCLUDED.epoch,
             lease_expires_at = EXCLUDED.lease_expires_at",
        &[
            &placement.actor_id.to_string(),
            &placement.node_id.as_str(),
            &to_i64(placement.epoch)?,
            &expires_ms,
        ],
    )
    .await
    .map_err(pg_error("lease write"))?;
    Ok(())
}

/// The rows of `page`, from the primary key's index (so O(limit + log n)).
async fn scan_in(
    client: &impl deadpool_postgres::GenericClient,
    actor: &str,
    page: &ScanPage,
) -> Result<StoredRows> {
    let range = &page.range;
    let limit = i64::try_from(page.limit).unwrap_or(i64::MAX);
    let mut sql = String::from("SELECT key, value, version FROM kelpie_kv WHERE actor_id = $1");
    let mut bounds: Vec<&[u8]> = Vec::new();
    for (bound, included, excluded) in [(&range.start, ">=", ">"), (&range.end, "<=", "<")] {
        let (op, key) = match bound {
            Bound::Included(key) => (included, key),
            Bound::Excluded(key) => (excluded, key),
            Bound::Unbounded => continue,
        };
        bounds.push(key.as_slice());
        sql.push_str(&format!(" AND key {op} ${}", bounds.len() + 2));
    }
    sql.push_str(match page.order {
        ScanOrder::Ascending => " ORDER BY key LIMIT $2",
        ScanOrder::Descending => " ORDER BY key DESC LIMIT $2",
    });
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&actor, &limit];
    params.extend(bounds.iter().map(|key| key as &(dyn ToSql + Sync)));
    let rows = client.query(sql.as_str(), &params).await.map_err(pg_error("scan"))?;
    rows.into_iter()
        .map(|row| {
            let version = to_u64(row.get(2), "kelpie_kv row")?;
            Ok((row.get(0), Versioned { value: row.get(1), version }))
        })
        .collect()
}

/// Observes, under the actor lock, everything `request` depends on.
async fn observe_in(
    txn: &deadpool_postgres::Transaction<'_>,
    request: &CommitRequest,
) -> Result<CommitObservation> {
    let actor = request.actor_id.to_string();
    let mut observation = CommitObservation::default();
    if !request.reads.is_empty() {
        let keys: Vec<&[u8]> = request.reads.keys().map(Vec::as_slice).collect();
        let rows = txn
            .query(
                "SELECT key, version FROM kelpie_kv WHERE actor_id = $1 AND key = ANY($2)",
                &[&actor, &keys],
            )
            .await
            .map_err(pg_error("commit read"))?;
        for key in request.reads.keys() {
            observation.read_versions.insert(key.clone(), None);
        }
        for row in rows {
            observation.read_versions.insert(row.get(0), Some(to_u64(row.get(1), "kelpie_kv row")?));
        }
    }
    for scan in &request.scans {
        let page = ScanPage::new(scan.range.clone(), ScanOrder::Ascending, SCAN_ROWS_COUNT_MAX + 1);
        let rows = scan_in(txn, &actor, &page).await?;
        observation.scan_rows.push(rows.into_iter().map(|(key, stored)| (key, stored.version)).collect());
    }
    if request.fence.is_some() {
        observation.placement = placement_in(txn, &request.actor_id).await?;
    }
    Ok(observation)
}

async fn apply_writes(txn: &deadpool_postgres::Transaction<'_>, request: &CommitRequest) -> Result<u64> {
    let actor = request.actor_id.to_string();
    let row = txn
        .query_one("SELECT nextval('kelpie_commit_version')", &[])
        .await
        .map_err(pg_error("next version"))?;
    let version: i64 = row.get(0);
    let mut keys: Vec<&[u8]> = Vec::new();
    let mut values: Vec<&[u8]> = Vec::new();
    let mut deleted: Vec<&[u8]> = Vec::new();
    for (key, value) in &request.writes {
        match value {
            Some(value) => {
                keys.push(key);
                values.push(value);
            }
            None => deleted.push(key),
        }
    }
    if !keys.is_empty() {
        txn.execute(
            "INSERT INTO kelpie_kv (actor_id, key, value, version)
             SELECT $1, k, v, $4 FROM unnest($2::bytea[], $3::bytea[]) AS t(k, v)
             ON CONFLICT (actor_id, key) DO UPDATE SET value = EXCLUDED.value, version = EXCLUDED.version",
            &[&actor, &keys, &values, &version],
        )
        .await
        .map_err(pg_error("commit write"))?;
    }
    if !deleted.is_empty() {
        txn.execute("DELETE FROM kelpie_kv WHERE actor_id = $1 AND key = ANY($2)", &[&actor, &deleted])
            .await
            .map_err(pg_error("commit delete"))?;
    }
    to_u64(version, "kelpie_commit_version")
}

impl PostgresBackend {
    async fn commit_request(&self, request: CommitRequest) -> Result<CommitInfo> {
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(pg_error("begin"))?;
        lock_actor(&txn, &request.actor_id.to_string()).await?;
        let observation = observe_in(&txn, &request).await?;
        // On a failed check the SQL transaction is dropped, which rolls it back.
        check_commit(&request, &observation)?;
        let version = if request.is_read_only() { 0 } else { apply_writes(&txn, &request).await? };
        txn.commit().await.map_err(pg_error("commit"))?;
        Ok(CommitInfo { version })
    }

    async fn put_placement_inner(&self, placement: Placement) -> Result<()> {
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(pg_error("begin"))?;
        lock_actor(&txn, &placement.actor_id.to_string()).await?;
        let current = placement_in(&txn, &placement.actor_id).await?;
        check_put(current.as_ref(), &placement)?;
        store_placement(&txn, &placement).await?;
        txn.commit().await.map_err(pg_error("commit"))
    }

    async fn claim_inner(&self, actor: ActorId, node: NodeId, expected_epoch: u64) -> Result<ClaimOutcome> {
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(pg_error("begin"))?;
        lock_actor(&txn, &actor.to_string()).await?;
        let current = placement_in(&txn, &actor).await?;
        let outcome = decide_claim(current, actor, node, expected_epoch);
        if let ClaimOutcome::Claimed(placement) = &outcome {
            store_placement(&txn, placement).await?;
        }
        txn.commit().await.map_err(pg_error("commit"))?;
        Ok(outcome)
    }
}

impl PostgresBackend {
    /// The actor's placement with its lease, and the database's time now.
    pub async fn leased_placement(&self, actor: &ActorId) -> Result<(Option<LeasedPlacement>, u64)> {
        let client = self.client().await?;
        leased_placement_in(&client, actor).await
    }

    /// One atomic lease decision on the database's clock: under the actor
    /// lock that fenced commits also take, reads the row and the database
    /// time, lets `decide` choose the next row (`None`: leave it), stores it
    /// and commits. No commit of the actor can interleave, so once a claim
    /// returns, a fenced commit at an older epoch can no longer succeed.
    pub async fn update_leased_placement<T, F>(&self, actor: &ActorId, decide: F) -> Result<T>
    where
        F: FnOnce(Option<&LeasedPlacement>, u64) -> (Option<LeasedPlacement>, T) + Send,
        T: Send,
    {
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(pg_error("begin"))?;
        lock_actor(&txn, &actor.to_string()).await?;
        let (current, now_ms) = leased_placement_in(&txn, actor).await?;
        let (next, decided) = decide(current.as_ref(), now_ms);
        if let Some(next) = next {
            assert_eq!(&next.placement.actor_id, actor, "lease decision for another actor");
            check_put(current.as_ref().map(|c| &c.placement), &next.placement)?;
            store_leased_placement(&txn, &next).await?;
        }
        txn.commit().await.map_err(pg_error("commit"))?;
        Ok(decided)
    }
}

impl Backend for PostgresBackend {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn get<'a>(&'a self, actor: &'a ActorId, key: &'a [u8]) -> BoxFut<'a, Result<Option<Versioned>>> {
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT value, version FROM kelpie_kv WHERE actor_id = $1 AND key = $2",
                    &[&actor.to_string(), &key],
                )
                .await
                .map_err(pg_error("get"))?;
            row.map(|row| Ok(Versioned { value: row.get(0), version: to_u64(row.get(1), "kelpie_kv row")? }))
                .transpose()
        })
    }

    fn scan<'a>(&'a self, actor: &'a ActorId, page: &'a ScanPage) -> BoxFut<'a, Result<StoredRows>> {
        Box::pin(async move {
            let client = self.client().await?;
            scan_in(&client, &actor.to_string(), page).await
        })
    }

    fn commit(&self, request: CommitRequest) -> BoxFut<'_, Result<CommitInfo>> {
        Box::pin(self.commit_request(request))
    }

    fn get_placement<'a>(&'a self, actor: &'a ActorId) -> BoxFut<'a, Result<Option<Placement>>> {
        Box::pin(async move {
            let client = self.client().await?;
            placement_in(&client, actor).await
        })
    }

    fn put_placement(&self, placement: Placement) -> BoxFut<'_, Result<()>> {
        Box::pin(self.put_placement_inner(placement))
    }

    fn claim_placement(
        &self,
        actor: ActorId,
        node: NodeId,
        expected_epoch: u64,
    ) -> BoxFut<'_, Result<ClaimOutcome>> {
        Box::pin(self.claim_inner(actor, node, expected_epoch))
    }
}
