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

use std::collections::BTreeMap;
use std::ops::Bound;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use kelpie_core::{ActorId, Error, NodeId, Result};
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

use crate::backend::{Backend, BoxFut};
use crate::limits::{
    POSTGRES_CONNECT_TIMEOUT_MS, POSTGRES_POOL_CONNECTIONS_COUNT_MAX, POSTGRES_POOL_WAIT_TIMEOUT_MS,
    POSTGRES_TCP_USER_TIMEOUT_MS, SCAN_ROWS_COUNT_MAX,
};
use crate::placement::{check_put, decide_claim};
use crate::txn::key_text;
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
CREATE OR REPLACE FUNCTION kelpie_commit(
    p_actor TEXT, p_fence_node TEXT, p_fence_epoch BIGINT,
    p_read_keys BYTEA[], p_read_versions BIGINT[],
    p_scan_lo BYTEA[], p_scan_lo_incl BOOLEAN[], p_scan_hi BYTEA[], p_scan_hi_incl BOOLEAN[],
    p_scan_seen_ends INT[], p_seen_keys BYTEA[], p_seen_versions BIGINT[], p_scan_limit INT,
    p_put_keys BYTEA[], p_put_values BYTEA[], p_delete_keys BYTEA[],
    OUT outcome TEXT, OUT commit_version BIGINT, OUT conflict_key BYTEA)
LANGUAGE plpgsql AS $commit$
DECLARE
    held RECORD;
    seen_from INT := 1;
    cur_keys BYTEA[];
    cur_versions BIGINT[];
    n INT;
BEGIN
    commit_version := 0;
    PERFORM pg_advisory_xact_lock(hashtextextended(p_actor, 0));
    IF p_fence_node IS NOT NULL THEN
        SELECT node_id, epoch INTO held FROM kelpie_placements WHERE actor_id = p_actor;
        IF NOT FOUND OR held.node_id <> p_fence_node OR held.epoch <> p_fence_epoch THEN
            outcome := 'fenced';
            RETURN;
        END IF;
    END IF;
    SELECT r.k INTO conflict_key
    FROM unnest(p_read_keys, p_read_versions) AS r(k, v)
    LEFT JOIN kelpie_kv kv ON kv.actor_id = p_actor AND kv.key = r.k
    WHERE kv.version IS DISTINCT FROM r.v
    ORDER BY r.k LIMIT 1;
    IF FOUND THEN
        outcome := 'conflict';
        RETURN;
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_scan_seen_ends, 1), 0) LOOP
        -- Bounds as index conditions: the low one is always given (the
        -- empty key when unbounded); an unbounded high one is its own query.
        IF p_scan_hi[i] IS NULL THEN
            SELECT coalesce(array_agg(t.key ORDER BY t.key), '{}'),
                   coalesce(array_agg(t.version ORDER BY t.key), '{}')
            INTO cur_keys, cur_versions
            FROM (SELECT kv.key, kv.version FROM kelpie_kv kv
                  WHERE kv.actor_id = p_actor AND kv.key >= p_scan_lo[i]
                    AND (p_scan_lo_incl[i] OR kv.key <> p_scan_lo[i])
                  ORDER BY kv.key LIMIT p_scan_limit) AS t;
        ELSE
            SELECT coalesce(array_agg(t.key ORDER BY t.key), '{}'),
                   coalesce(array_agg(t.version ORDER BY t.key), '{}')
            INTO cur_keys, cur_versions
            FROM (SELECT kv.key, kv.version FROM kelpie_kv kv
                  WHERE kv.actor_id = p_actor AND kv.key >= p_scan_lo[i] AND kv.key <= p_scan_hi[i]
                    AND (p_scan_lo_incl[i] OR kv.key <> p_scan_lo[i])
                    AND (p_scan_hi_incl[i] OR kv.key <> p_scan_hi[i])
                  ORDER BY kv.key LIMIT p_scan_limit) AS t;
        END IF;
        n := p_scan_seen_ends[i] - seen_from + 1;
        IF cur_keys IS DISTINCT FROM coalesce(p_seen_keys[seen_from : p_scan_seen_ends[i]], '{}')
           OR cur_versions IS DISTINCT FROM coalesce(p_seen_versions[seen_from : p_scan_seen_ends[i]], '{}') THEN
            -- The first key at which the two scans disagree.
            FOR j IN 1 .. greatest(n, coalesce(array_length(cur_keys, 1), 0)) LOOP
                IF j > n THEN
                    conflict_key := cur_keys[j];
                ELSIF j > coalesce(array_length(cur_keys, 1), 0) THEN
                    conflict_key := p_seen_keys[seen_from + j - 1];
                ELSIF cur_keys[j] <> p_seen_keys[seen_from + j - 1]
                      OR cur_versions[j] <> p_seen_versions[seen_from + j - 1] THEN
                    conflict_key := least(cur_keys[j], p_seen_keys[seen_from + j - 1]);
                END IF;
                EXIT WHEN conflict_key IS NOT NULL;
            END LOOP;
            outcome := 'conflict';
            RETURN;
        END IF;
        seen_from := p_scan_seen_ends[i] + 1;
    END LOOP;
    outcome := 'ok';
    IF coalesce(array_length(p_put_keys, 1), 0) + coalesce(array_length(p_delete_keys, 1), 0) = 0 THEN
        RETURN;
    END IF;
    commit_version := nextval('kelpie_commit_version');
    INSERT INTO kelpie_kv (actor_id, key, value, version)
    SELECT p_actor, t.k, t.v, commit_version FROM unnest(p_put_keys, p_put_values) AS t(k, v)
    ON CONFLICT (actor_id, key) DO UPDATE SET value = EXCLUDED.value, version = EXCLUDED.version;
    DELETE FROM kelpie_kv WHERE actor_id = p_actor AND key = ANY(p_delete_keys);
END
$commit$;
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

/// `sql` prepared on this connection once, then reused: a statement costs
/// one round trip instead of two (parse, then execute).
async fn prepared(
    client: &impl deadpool_postgres::GenericClient,
    sql: &str,
    operation: &'static str,
) -> Result<tokio_postgres::Statement> {
    client.prepare_cached(sql).await.map_err(pg_error(operation))
}

/// Takes the actor's mutation lock for the rest of the SQL transaction.
async fn lock_actor(txn: &deadpool_postgres::Transaction<'_>, actor: &str) -> Result<()> {
    let statement =
        prepared(txn, "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", "lock actor").await?;
    txn.execute(&statement, &[&actor]).await.map_err(pg_error("lock actor"))?;
    Ok(())
}

async fn placement_in(
    client: &impl deadpool_postgres::GenericClient,
    actor: &ActorId,
) -> Result<Option<Placement>> {
    let statement = prepared(
        client,
        "SELECT node_id, epoch FROM kelpie_placements WHERE actor_id = $1",
        "placement read",
    )
    .await?;
    let row =
        client.query_opt(&statement, &[&actor.to_string()]).await.map_err(pg_error("placement read"))?;
    let Some(row) = row else { return Ok(None) };
    let location = format!("placement of {actor}");
    let node_id = NodeId::new(row.get::<_, String>(0))
        .map_err(|err| Error::Corruption { location: location.clone(), reason: err.to_string() })?;
    Ok(Some(Placement { actor_id: actor.clone(), node_id, epoch: to_u64(row.get(1), &location)? }))
}

async fn store_placement(txn: &deadpool_postgres::Transaction<'_>, placement: &Placement) -> Result<()> {
    let sql = "INSERT INTO kelpie_placements (actor_id, node_id, epoch) VALUES ($1, $2, $3)
         ON CONFLICT (actor_id) DO UPDATE
         SET node_id = EXCLUDED.node_id, epoch = EXCLUDED.epoch, lease_expires_at = NULL";
    let statement = prepared(txn, sql, "placement write").await?;
    txn.execute(
        &statement,
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
    let statement = prepared(client, &sql, "lease read").await?;
    let row = client.query_one(&statement, &[&actor.to_string()]).await.map_err(pg_error("lease read"))?;
    let now_ms = db_ms(row.get(3))?;
    Ok((leased_of_row(actor, row.get(0), row.get(1), row.get(2))?, now_ms))
}

/// The database's time as read by [`DB_NOW_MS_SQL`].
fn db_ms(ms: i64) -> Result<u64> {
    u64::try_from(ms).map_err(|_| Error::Corruption {
        location: "database clock".to_string(),
        reason: "clock_timestamp() before 1970".to_string(),
    })
}

/// A placement row's columns (node, epoch, lease expiry in ms; all `None`
/// when there is no row) as a [`LeasedPlacement`].
fn leased_of_row(
    actor: &ActorId,
    node_id: Option<String>,
    epoch: Option<i64>,
    lease_expires_at_ms: Option<i64>,
) -> Result<Option<LeasedPlacement>> {
    let location = format!("leased placement of {actor}");
    let Some(node_id) = node_id else { return Ok(None) };
    let node_id = NodeId::new(node_id)
        .map_err(|err| Error::Corruption { location: location.clone(), reason: err.to_string() })?;
    let epoch = to_u64(epoch.unwrap_or(0), &location)?;
    let lease_expires_at_ms = lease_expires_at_ms.map(|ms| to_u64(ms, &location)).transpose()?;
    let placement = Placement { actor_id: actor.clone(), node_id, epoch };
    Ok(Some(LeasedPlacement { placement, lease_expires_at_ms }))
}

async fn store_leased_placement(
    txn: &deadpool_postgres::Transaction<'_>,
    leased: &LeasedPlacement,
) -> Result<()> {
    let placement = &leased.placement;
    let expires_ms = leased.lease_expires_at_ms.map(to_i64).transpose()?;
    let sql = "INSERT INTO kelpie_placements (actor_id, node_id, epoch, lease_expires_at)
         VALUES ($1, $2, $3, 'epoch'::TIMESTAMPTZ + $4::BIGINT * INTERVAL '1 millisecond')
         ON CONFLICT (actor_id) DO UPDATE SET node_id = EXCLUDED.node_id, epoch = EXCLUDED.epoch,
             lease_expires_at = EXCLUDED.lease_expires_at";
    let statement = prepared(txn, sql, "lease write").await?;
    txn.execute(
        &statement,
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
    let statement = prepared(client, &sql, "scan").await?;
    let rows = client.query(&statement, &params).await.map_err(pg_error("scan"))?;
    rows.into_iter()
        .map(|row| {
            let version = to_u64(row.get(2), "kelpie_kv row")?;
            Ok((row.get(0), Versioned { value: row.get(1), version }))
        })
        .collect()
}

/// The statement running a whole commit on the server (the function
/// `kelpie_commit`, created with the schema): one round trip.
const COMMIT_SQL: &str = "SELECT outcome, commit_version, conflict_key FROM kelpie_commit(
    $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)";

/// A scan bound as the commit function takes it: the key (`None`:
/// unbounded) and whether it is included. An unbounded low end is the
/// empty key, included (the smallest key there is).
fn scan_bound(bound: &Bound<Vec<u8>>, low: bool) -> (Option<&[u8]>, bool) {
    match bound {
        Bound::Included(key) => (Some(key.as_slice()), true),
        Bound::Excluded(key) => (Some(key.as_slice()), false),
        Bound::Unbounded if low => (Some(&[]), true),
        Bound::Unbounded => (None, false),
    }
}

impl PostgresBackend {
    /// Validates and applies `request` in one round trip: `kelpie_commit`
    /// takes the actor lock, checks the fence, the read versions and the
    /// scanned rows in the order `check_commit` does (the conformance suite
    /// holds every backend to the same answers), and writes under one new
    /// version.
    async fn commit_request(&self, request: CommitRequest) -> Result<CommitInfo> {
        let actor = request.actor_id.to_string();
        let (fence_node, fence_epoch) = match &request.fence {
            Some(fence) => {
                assert_eq!(fence.actor_id, request.actor_id, "a fence guards the committing actor");
                (Some(fence.node_id.as_str()), Some(to_i64(fence.epoch)?))
            }
            None => (None, None),
        };
        let read_keys: Vec<&[u8]> = request.reads.keys().map(Vec::as_slice).collect();
        let read_versions: Vec<Option<i64>> =
            request.reads.values().map(|seen| seen.map(to_i64).transpose()).collect::<Result<_>>()?;
        let (mut lows, mut low_incl, mut highs, mut high_incl) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut seen_ends, mut seen_keys, mut seen_versions) = (Vec::new(), Vec::new(), Vec::new());
        for scan in &request.scans {
            let (low, low_included) = scan_bound(&scan.range.start, true);
            let (high, high_included) = scan_bound(&scan.range.end, false);
            lows.push(low);
            low_incl.push(low_included);
            highs.push(high);
            high_incl.push(high_included);
            for (key, version) in &scan.seen {
                seen_keys.push(key.as_slice());
                seen_versions.push(to_i64(*version)?);
            }
            seen_ends.push(i32::try_from(seen_keys.len()).expect("a scan observation fits i32"));
        }
        let scan_limit = i32::try_from(SCAN_ROWS_COUNT_MAX + 1).expect("the scan cap fits i32");
        let (mut put_keys, mut put_values, mut delete_keys) = (Vec::new(), Vec::new(), Vec::new());
        for (key, value) in &request.writes {
            match value {
                Some(value) => {
                    put_keys.push(key.as_slice());
                    put_values.push(value.as_slice());
                }
                None => delete_keys.push(key.as_slice()),
            }
        }
        let client = self.client().await?;
        let statement = prepared(&client, COMMIT_SQL, "prepare commit").await?;
        let params: [&(dyn ToSql + Sync); 16] = [
            &actor,
            &fence_node,
            &fence_epoch,
            &read_keys,
            &read_versions,
            &lows,
            &low_incl,
            &highs,
            &high_incl,
            &seen_ends,
            &seen_keys,
            &seen_versions,
            &scan_limit,
            &put_keys,
            &put_values,
            &delete_keys,
        ];
        let row = client.query_one(&statement, &params).await.map_err(pg_error("commit"))?;
        let (outcome, version): (String, i64) = (row.get(0), row.get(1));
        match outcome.as_str() {
            "ok" if request.is_read_only() => {
                assert_eq!(version, 0, "a read-only commit takes no version");
                Ok(CommitInfo { version: 0 })
            }
            "ok" => {
                let info = CommitInfo { version: to_u64(version, "kelpie_commit_version")? };
                record_durable(1);
                Ok(info)
            }
            "fenced" => {
                let fence = request.fence.as_ref().expect("only a fenced commit is refused as fenced");
                Err(Error::Fenced {
                    actor_id: fence.actor_id.clone(),
                    node_id: fence.node_id.clone(),
                    epoch: fence.epoch,
                })
            }
            "conflict" => {
                let key: Option<Vec<u8>> = row.get(2);
                Err(Error::TransactionConflict {
                    actor_id: request.actor_id.clone(),
                    key: key_text(&key.unwrap_or_default()),
                })
            }
            other => Err(Error::Corruption {
                location: "kelpie_commit".to_string(),
                reason: format!("unknown outcome {other:?}"),
            }),
        }
    }

    async fn put_placement_inner(&self, placement: Placement) -> Result<()> {
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(pg_error("begin"))?;
        lock_actor(&txn, &placement.actor_id.to_string()).await?;
        let current = placement_in(&txn, &placement.actor_id).await?;
        check_put(current.as_ref(), &placement)?;
        store_placement(&txn, &placement).await?;
        txn.commit().await.map_err(pg_error("commit"))?;
        record_durable(1);
        Ok(())
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
        if matches!(outcome, ClaimOutcome::Claimed(_)) {
            record_durable(1);
        }
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
        let wrote = next.is_some();
        if let Some(next) = next {
            assert_eq!(&next.placement.actor_id, actor, "lease decision for another actor");
            check_put(current.as_ref().map(|c| &c.placement), &next.placement)?;
            store_leased_placement(&txn, &next).await?;
        }
        txn.commit().await.map_err(pg_error("commit"))?;
        if wrote {
            record_durable(1);
        }
        Ok(decided)
    }
}

/// Lease decisions of many actors in one SQL transaction, for
/// [`PostgresBackend::update_leased_placements`].
const LOCK_MANY_SQL: &str = "SELECT pg_advisory_xact_lock(hashtextextended(a, 0))
     FROM unnest($1::TEXT[]) WITH ORDINALITY AS t(a, n) ORDER BY n";

impl PostgresBackend {
    /// [`Self::update_leased_placement`] for many actors in one SQL
    /// transaction of five round trips whatever their number: takes every
    /// actor's lock (in actor order, so two batches never deadlock, and a
    /// one-actor transaction holds one lock), reads every row with one
    /// reading of the database's clock, lets `decide` choose each next row,
    /// stores the changed ones and commits. `decide` sees the actors in the
    /// order given; the answers come back in that order. The actors must be
    /// distinct.
    pub async fn update_leased_placements<T, F>(&self, actors: &[ActorId], mut decide: F) -> Result<Vec<T>>
    where
        F: FnMut(&ActorId, Option<&LeasedPlacement>, u64) -> (Option<LeasedPlacement>, T) + Send,
        T: Send,
    {
        let mut order: Vec<usize> = (0..actors.len()).collect();
        order.sort_by(|a, b| actors[*a].cmp(&actors[*b]));
        assert!(order.windows(2).all(|w| actors[w[0]] != actors[w[1]]), "a batch names each actor once");
        let sorted: Vec<String> = order.iter().map(|i| actors[*i].to_string()).collect();
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(pg_error("begin"))?;
        let lock = prepared(&txn, LOCK_MANY_SQL, "lock actors").await?;
        txn.execute(&lock, &[&sorted]).await.map_err(pg_error("lock actors"))?;
        let read_sql = format!(
            "WITH now AS (SELECT {DB_NOW_MS_SQL} AS ms)
             SELECT t.a, p.node_id, p.epoch, (extract(epoch FROM p.lease_expires_at) * 1000)::BIGINT, now.ms
             FROM unnest($1::TEXT[]) AS t(a) CROSS JOIN now LEFT JOIN kelpie_placements p ON p.actor_id = t.a"
        );
        let read = prepared(&txn, &read_sql, "lease read").await?;
        let rows = txn.query(&read, &[&sorted]).await.map_err(pg_error("lease read"))?;
        let mut current: BTreeMap<String, Option<LeasedPlacement>> = BTreeMap::new();
        let mut now_ms = 0;
        for row in rows {
            let actor: String = row.get(0);
            let actor_id = ActorId::from_str(&actor).map_err(|err| Error::Corruption {
                location: "kelpie_placements".to_string(),
                reason: format!("actor id {actor:?}: {err}"),
            })?;
            now_ms = db_ms(row.get(4))?;
            let leased = leased_of_row(&actor_id, row.get(1), row.get(2), row.get(3))?;
            current.insert(actor, leased);
        }
        let mut decided = Vec::with_capacity(actors.len());
        let mut writes: Vec<LeasedPlacement> = Vec::new();
        for actor_id in actors {
            let before = current.get(&actor_id.to_string()).cloned().flatten();
            let (next, answer) = decide(actor_id, before.as_ref(), now_ms);
            if let Some(next) = next {
                assert_eq!(&next.placement.actor_id, actor_id, "lease decision for another actor");
                check_put(before.as_ref().map(|c| &c.placement), &next.placement)?;
                writes.push(next);
            }
            decided.push(answer);
        }
        if !writes.is_empty() {
            let ids: Vec<String> = writes.iter().map(|w| w.placement.actor_id.to_string()).collect();
            let nodes: Vec<&str> = writes.iter().map(|w| w.placement.node_id.as_str()).collect();
            let epochs: Vec<i64> = writes.iter().map(|w| to_i64(w.placement.epoch)).collect::<Result<_>>()?;
            let expiries: Vec<Option<i64>> = writes
                .iter()
                .map(|w| w.lease_expires_at_ms.map(to_i64).transpose())
                .collect::<Result<_>>()?;
            let sql = "INSERT INTO kelpie_placements (actor_id, node_id, epoch, lease_expires_at)
                 SELECT a, n, e, 'epoch'::TIMESTAMPTZ + x * INTERVAL '1 millisecond'
                 FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[]) AS t(a, n, e, x)
                 ON CONFLICT (actor_id) DO UPDATE SET node_id = EXCLUDED.node_id, epoch = EXCLUDED.epoch,
                     lease_expires_at = EXCLUDED.lease_expires_at";
            let write = prepared(&txn, sql, "lease write").await?;
            txn.execute(&write, &[&ids, &nodes, &epochs, &expiries])
                .await
                .map_err(pg_error("lease write"))?;
        }
        txn.commit().await.map_err(pg_error("commit"))?;
        if !writes.is_empty() {
            record_durable(writes.len() as u64);
        }
        Ok(decided)
    }
}

/// Counts one committed write transaction (one WAL flush at commit) and
/// the writes it made durable (`kelpie_core::metrics`); a transaction
/// that wrote nothing flushes nothing and is not counted.
fn record_durable(writes: u64) {
    use kelpie_core::metrics::{increment, observe, STORAGE_BATCH_SIZE, STORAGE_FSYNCS, STORAGE_WRITES};
    assert!(writes > 0, "only a transaction that wrote is counted");
    increment(&STORAGE_FSYNCS, &["postgres"], 1);
    increment(&STORAGE_WRITES, &["postgres"], writes);
    observe(&STORAGE_BATCH_SIZE, &["postgres"], writes as f64);
}

impl Backend for PostgresBackend {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn get<'a>(&'a self, actor: &'a ActorId, key: &'a [u8]) -> BoxFut<'a, Result<Option<Versioned>>> {
        Box::pin(async move {
            let client = self.client().await?;
            let sql = "SELECT value, version FROM kelpie_kv WHERE actor_id = $1 AND key = $2";
            let statement = prepared(&client, sql, "get").await?;
            let row =
                client.query_opt(&statement, &[&actor.to_string(), &key]).await.map_err(pg_error("get"))?;
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
