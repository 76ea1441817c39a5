//! API keys on SQLite: writes on the writer thread, reads on the pool.

use rusqlite::{params, Connection, OptionalExtension};
use time::OffsetDateTime;

use super::SqliteStore;
use crate::domain::{from_unix_micros, to_unix_micros, ApiKey, NewApiKey, Scope};
use crate::storage::StoreError;

const KEY_COLUMNS: &str = "id, name, scope, key_prefix, created_at, last_used_at, revoked_at";

struct KeyRow {
    id: i64,
    name: String,
    scope: String,
    key_prefix: String,
    created_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl From<KeyRow> for ApiKey {
    fn from(row: KeyRow) -> ApiKey {
        ApiKey {
            id: row.id,
            name: row.name,
            // The CHECK constraint admits only the three scopes; fail closed if not.
            scope: Scope::parse(&row.scope).unwrap_or(Scope::Read),
            prefix: row.key_prefix,
            created_at: from_unix_micros(row.created_at),
            last_used_at: row.last_used_at.map(from_unix_micros),
            revoked_at: row.revoked_at.map(from_unix_micros),
        }
    }
}

fn key_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKey> {
    Ok(KeyRow {
        id: row.get(0)?,
        name: row.get(1)?,
        scope: row.get(2)?,
        key_prefix: row.get(3)?,
        created_at: row.get(4)?,
        last_used_at: row.get(5)?,
        revoked_at: row.get(6)?,
    }
    .into())
}

fn insert(conn: &Connection, key: &NewApiKey, now: OffsetDateTime) -> Result<ApiKey, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "INSERT INTO api_keys (name, scope, key_hash, key_prefix, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) RETURNING {KEY_COLUMNS}"
        ))?
        .query_row(
            params![
                key.name,
                key.scope.as_str(),
                key.hash.as_slice(),
                key.prefix,
                to_unix_micros(now)
            ],
            key_from_row,
        )?)
}

impl SqliteStore {
    pub async fn create_api_key(
        &self,
        key: NewApiKey,
        now: OffsetDateTime,
    ) -> Result<ApiKey, StoreError> {
        self.write(move |conn| insert(conn, &key, now)).await
    }

    /// Creates `key` only if no key exists at all; the writer is the only writer, so
    /// the look and the insert cannot be split by another start.
    pub async fn bootstrap_api_key(
        &self,
        key: NewApiKey,
        now: OffsetDateTime,
    ) -> Result<Option<ApiKey>, StoreError> {
        self.write(move |conn| {
            let any: Option<i64> = conn
                .prepare_cached("SELECT id FROM api_keys LIMIT 1")?
                .query_row([], |row| row.get(0))
                .optional()?;
            match any {
                Some(_) => Ok(None),
                None => insert(conn, &key, now).map(Some),
            }
        })
        .await
    }

    pub async fn revoke_api_key(
        &self,
        id: i64,
        now: OffsetDateTime,
    ) -> Result<Option<ApiKey>, StoreError> {
        self.write(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1 \
                     RETURNING {KEY_COLUMNS}"
                ))?
                .query_row(params![id, to_unix_micros(now)], key_from_row)
                .optional()?)
        })
        .await
    }

    pub async fn touch_api_keys(&self, used: Vec<(i64, OffsetDateTime)>) -> Result<(), StoreError> {
        self.write(move |conn| {
            let mut update = conn.prepare_cached(
                "UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?2) \
                 WHERE id = ?1",
            )?;
            for (id, at) in &used {
                update.execute(params![id, to_unix_micros(*at)])?;
            }
            Ok(())
        })
        .await
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.inner.reads.read(|conn| {
            let mut statement =
                conn.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY id"))?;
            let rows = statement.query_map([], key_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub async fn find_api_key(&self, hash: &[u8; 32]) -> Result<Option<ApiKey>, StoreError> {
        self.inner.reads.read(|conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ?1"
                ))?
                .query_row([hash.as_slice()], key_from_row)
                .optional()?)
        })
    }

    /// Every key not revoked, with its hash: what the server authenticates against.
    pub async fn active_api_keys(&self) -> Result<Vec<(Vec<u8>, ApiKey)>, StoreError> {
        self.inner.reads.read(|conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS}, key_hash FROM api_keys WHERE revoked_at IS NULL"
            ))?;
            let rows = statement.query_map([], |row| {
                Ok((row.get::<_, Vec<u8>>(7)?, key_from_row(row)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}
