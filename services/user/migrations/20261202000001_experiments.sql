-- A/B experiments (experiment.v1.ExperimentService). The experiment itself
-- is one JSON document (mercato_experiment::Experiment): it is read and
-- written whole, and assignment needs all of it.
CREATE TABLE experiments (
    experiment_key TEXT PRIMARY KEY,
    body           TEXT NOT NULL,
    -- Bumped by every update: concurrent updates cannot lose each other.
    version        BIGINT NOT NULL,
    created_at_us  BIGINT NOT NULL,
    updated_at_us  BIGINT NOT NULL
);

-- The first assignment of each enrolled user: its variant for results.
CREATE TABLE experiment_exposures (
    experiment_key TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    variant_key    TEXT NOT NULL,
    exposed_at_us  BIGINT NOT NULL,
    PRIMARY KEY (experiment_key, user_id)
);

-- Events of exposed users, attributed to the variant they were exposed to.
CREATE TABLE experiment_events (
    event_id       TEXT PRIMARY KEY,
    experiment_key TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    variant_key    TEXT NOT NULL,
    event_name     TEXT NOT NULL,
    value          DOUBLE PRECISION NOT NULL,
    at_us          BIGINT NOT NULL
);
CREATE INDEX experiment_events_by_name ON experiment_events (experiment_key, event_name);
