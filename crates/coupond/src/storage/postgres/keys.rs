//! API keys on PostgreSQL.

use sqlx::FromRow;
use time::OffsetDateTime;

use super::PgStore;
use crate::domain::{ApiKey, NewApiKey, Scope};
use crate::storage::StoreError;

const KEY_COLUMNS: &str = "id, name, scope, key_prefix, created_at, last_used_at, revoked_at";

#[derive(FromRow)]
struct KeyRow {
    id: i64,
    name: String,
    scope: String,
    key_prefix: String,
    created_at: OffsetDateTime,
    last_used_at: Option<OffsetDateTime>,
    revoked_at: Option<OffsetDateTime>,
}

impl From<KeyRow> for ApiKey {
    fn from(row: KeyRow) -> ApiKey {
        ApiKey {
            id: row.id,
            name: row.name,
            // The CHECK constraint admits only the three scopes; fail closed if not.
            scope: Scope::parse(&row.scope).unwrap_or(Scope::Read),
            prefix: row.key_prefix,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            revoked_at: row.revoked_at,
        }
    }
}

fn insert_sql() -> String {
    format!(
        "INSERT INTO api_keys (name, scope, key_hash, key_prefix, created_at) \
         VALUES ($1, $2, $3, $4, $5) RETURNING {KEY_COLUMNS}"
    )
}

impl PgStore {
    pub async fn create_api_key(
        &self,
        key: NewApiKey,
        now: OffsetDateTime,
    ) -> Result<ApiKey, StoreError> {
        let row: KeyRow = sqlx::query_as(&insert_sql())
            .bind(&key.name)
            .bind(key.scope.as_str())
            .bind(key.hash.as_slice())
            .bind(&key.prefix)
            .bind(now)
            .fetch_one(&mut *self.acquire().await?)
            .await?;
        Ok(row.into())
    }

    /// Creates `key` only if no key exists at all. The table lock makes two servers
    /// starting at once on an empty database create one key, not two.
    pub async fn bootstrap_api_key(
        &self,
        key: NewApiKey,
        now: OffsetDateTime,
    ) -> Result<Option<ApiKey>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let any: Option<(i64,)> = sqlx::query_as("SELECT id FROM api_keys LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        if any.is_some() {
            return Ok(None);
        }
        let row: KeyRow = sqlx::query_as(&insert_sql())
            .bind(&key.name)
            .bind(key.scope.as_str())
            .bind(key.hash.as_slice())
            .bind(&key.prefix)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(row.into()))
    }

    pub async fn revoke_api_key(
        &self,
        id: i64,
        now: OffsetDateTime,
    ) -> Result<Option<ApiKey>, StoreError> {
        let row: Option<KeyRow> = sqlx::query_as(&format!(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 \
             RETURNING {KEY_COLUMNS}"
        ))
        .bind(id)
        .bind(now)
        .fetch_optional(&mut *self.acquire().await?)
        .await?;
        Ok(row.map(ApiKey::from))
    }

    pub async fn touch_api_keys(&self, used: Vec<(i64, OffsetDateTime)>) -> Result<(), StoreError> {
        let (ids, times): (Vec<i64>, Vec<OffsetDateTime>) = used.into_iter().unzip();
        sqlx::query(
            "UPDATE api_keys k SET last_used_at = GREATEST(k.last_used_at, u.at) \
             FROM UNNEST($1::bigint[], $2::timestamptz[]) AS u(id, at) WHERE k.id = u.id",
        )
        .bind(&ids)
        .bind(&times)
        .execute(&mut *self.acquire().await?)
        .await?;
        Ok(())
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let rows: Vec<KeyRow> =
            sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY id"))
                .fetch_all(&mut *self.acquire().await?)
                .await?;
        Ok(rows.into_iter().map(ApiKey::from).collect())
    }

    pub async fn find_api_key(&self, hash: &[u8; 32]) -> Result<Option<ApiKey>, StoreError> {
        let row: Option<KeyRow> = sqlx::query_as(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"
        ))
        .bind(hash.as_slice())
        .fetch_optional(&mut *self.acquire().await?)
        .await?;
        Ok(row.map(ApiKey::from))
    }

    /// Every key not revoked, with its hash: what the server authenticates against.
    pub async fn active_api_keys(&self) -> Result<Vec<(Vec<u8>, ApiKey)>, StoreError> {
        #[derive(FromRow)]
        struct Row {
            key_hash: Vec<u8>,
            #[sqlx(flatten)]
            key: KeyRow,
        }
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT key_hash, {KEY_COLUMNS} FROM api_keys WHERE revoked_at IS NULL"
        ))
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.key_hash, r.key.into()))
            .collect())
    }
}
