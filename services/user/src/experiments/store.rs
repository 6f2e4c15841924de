//! Experiments, exposures and events in the user service's database
//! (portable SQL, Postgres or SQLite).

use mercato_experiment::Experiment;
use sqlx::{AnyPool, Row};

use super::error::ExperimentError;

/// An experiment as stored: the document, its version and times.
#[derive(Debug, Clone)]
pub struct StoredExperiment {
    pub experiment: Experiment,
    /// For optimistic concurrency of updates.
    pub version: i64,
    pub created_at_us: i64,
    pub updated_at_us: i64,
}

/// Per variant: distinct users exposed; distinct converted users and the
/// sum of their events' values for one event name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VariantCounts {
    pub exposures: u64,
    pub conversions: u64,
    pub value_sum: f64,
}

/// Reads and writes the experiment tables.
#[derive(Debug, Clone)]
pub struct ExperimentStore {
    pool: AnyPool,
}

fn decode(row: &sqlx::any::AnyRow) -> Result<StoredExperiment, ExperimentError> {
    let body: String = row.try_get("body")?;
    let experiment = serde_json::from_str(&body)
        .map_err(|e| ExperimentError::CorruptRow(format!("experiment body: {e}")))?;
    Ok(StoredExperiment {
        experiment,
        version: row.try_get("version")?,
        created_at_us: row.try_get("created_at_us")?,
        updated_at_us: row.try_get("updated_at_us")?,
    })
}

fn encode(experiment: &Experiment) -> Result<String, ExperimentError> {
    serde_json::to_string(experiment).map_err(|e| ExperimentError::CorruptRow(e.to_string()))
}

const COLUMNS: &str = "body, version, created_at_us, updated_at_us";

impl ExperimentStore {
    pub fn new(pool: AnyPool) -> Self {
        Self { pool }
    }

    /// Inserts a new experiment; [`ExperimentError::KeyTaken`] if the key is used.
    pub async fn insert(
        &self,
        experiment: &Experiment,
        now_us: i64,
    ) -> Result<StoredExperiment, ExperimentError> {
        sqlx::query(
            "INSERT INTO experiments (experiment_key, body, version, created_at_us, updated_at_us) \
             VALUES ($1, $2, 1, $3, $3)",
        )
        .bind(&experiment.key)
        .bind(encode(experiment)?)
        .bind(now_us)
        .execute(&self.pool)
        .await?;
        Ok(StoredExperiment {
            experiment: experiment.clone(),
            version: 1,
            created_at_us: now_us,
            updated_at_us: now_us,
        })
    }

    pub async fn get(&self, key: &str) -> Result<StoredExperiment, ExperimentError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM experiments WHERE experiment_key = $1"
        ))
        .bind(key)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(ExperimentError::NotFound)?;
        decode(&row)
    }

    /// Up to `limit` experiments with keys after `after`, by key.
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredExperiment>, ExperimentError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM experiments WHERE experiment_key > $1 \
             ORDER BY experiment_key LIMIT $2"
        ))
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// Replaces the experiment if it is still at `version`;
    /// [`ExperimentError::Concurrent`] if another update came first.
    pub async fn replace(
        &self,
        stored: &StoredExperiment,
        experiment: &Experiment,
        now_us: i64,
    ) -> Result<StoredExperiment, ExperimentError> {
        let updated = sqlx::query(
            "UPDATE experiments SET body = $1, version = version + 1, updated_at_us = $2 \
             WHERE experiment_key = $3 AND version = $4",
        )
        .bind(encode(experiment)?)
        .bind(now_us)
        .bind(&experiment.key)
        .bind(stored.version)
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(ExperimentError::Concurrent);
        }
        Ok(StoredExperiment {
            experiment: experiment.clone(),
            version: stored.version + 1,
            created_at_us: stored.created_at_us,
            updated_at_us: now_us,
        })
    }

    /// Records the user's first exposure; true if this was it.
    pub async fn expose(
        &self,
        key: &str,
        user_id: &str,
        variant: &str,
        now_us: i64,
    ) -> Result<bool, ExperimentError> {
        let inserted = sqlx::query(
            "INSERT INTO experiment_exposures (experiment_key, user_id, variant_key, exposed_at_us) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (experiment_key, user_id) DO NOTHING",
        )
        .bind(key)
        .bind(user_id)
        .bind(variant)
        .bind(now_us)
        .execute(&self.pool)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    /// Records an event for the variant the user was exposed to; None (and
    /// nothing stored) when the user has no exposure.
    pub async fn track(
        &self,
        key: &str,
        user_id: &str,
        event_name: &str,
        value: f64,
        now_us: i64,
    ) -> Result<Option<String>, ExperimentError> {
        let row = sqlx::query(
            "INSERT INTO experiment_events \
               (event_id, experiment_key, user_id, variant_key, event_name, value, at_us) \
             SELECT $1, experiment_key, user_id, variant_key, $2, $3, $4 \
             FROM experiment_exposures WHERE experiment_key = $5 AND user_id = $6 \
             RETURNING variant_key",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(event_name)
        .bind(value)
        .bind(now_us)
        .bind(key)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("variant_key")).transpose()?)
    }

    /// Exposures, conversions and value sums of `event_name`, by variant key.
    pub async fn counts(
        &self,
        key: &str,
        event_name: &str,
    ) -> Result<std::collections::BTreeMap<String, VariantCounts>, ExperimentError> {
        let mut counts = std::collections::BTreeMap::<String, VariantCounts>::new();
        let exposures = sqlx::query(
            "SELECT variant_key, COUNT(*) AS n FROM experiment_exposures \
             WHERE experiment_key = $1 GROUP BY variant_key",
        )
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        for row in exposures {
            let n: i64 = row.try_get("n")?;
            counts
                .entry(row.try_get("variant_key")?)
                .or_default()
                .exposures = u64::try_from(n).unwrap_or(0);
        }
        let conversions = sqlx::query(
            "SELECT variant_key, COUNT(DISTINCT user_id) AS n, SUM(value) AS total \
             FROM experiment_events WHERE experiment_key = $1 AND event_name = $2 \
             GROUP BY variant_key",
        )
        .bind(key)
        .bind(event_name)
        .fetch_all(&self.pool)
        .await?;
        for row in conversions {
            let n: i64 = row.try_get("n")?;
            let entry = counts.entry(row.try_get("variant_key")?).or_default();
            entry.conversions = u64::try_from(n).unwrap_or(0);
            entry.value_sum = row.try_get("total")?;
        }
        Ok(counts)
    }
}
