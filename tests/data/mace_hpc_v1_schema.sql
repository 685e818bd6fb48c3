-- mace-hpc schema version 1 (mace_hpc/database/schema.py before upstream compatibility), test data:
-- tests migrate a database made by that version.
CREATE TABLE IF NOT EXISTS materials (
        material_id    TEXT PRIMARY KEY NOT NULL CHECK (length(material_id) > 0),
        formula        TEXT NOT NULL,
        space_group    INTEGER,
        dimensionality TEXT NOT NULL DEFAULT 'CRYSTAL',
        source_type    TEXT,
        source_file    TEXT,
        metadata_json  TEXT NOT NULL DEFAULT '{}',
        created_at     TEXT NOT NULL,
        updated_at     TEXT NOT NULL
    );
CREATE TABLE IF NOT EXISTS calculations (
        calc_id         TEXT PRIMARY KEY NOT NULL,
        material_id     TEXT NOT NULL REFERENCES materials(material_id),
        calc_type       TEXT NOT NULL,
        status          TEXT NOT NULL DEFAULT 'pending',
        workflow_id     TEXT,
        input_file      TEXT,
        output_file     TEXT,
        work_dir        TEXT,
        settings_json   TEXT NOT NULL DEFAULT '{}',
        extra_json      TEXT NOT NULL DEFAULT '{}',
        error_message   TEXT,
        exit_code       INTEGER,
        runtime_seconds REAL,
        created_at      TEXT NOT NULL,
        started_at      TEXT,
        completed_at    TEXT,
        updated_at      TEXT NOT NULL
    );
CREATE INDEX IF NOT EXISTS calculations_by_material ON calculations(material_id);
CREATE INDEX IF NOT EXISTS calculations_by_status ON calculations(status);
CREATE TABLE IF NOT EXISTS properties (
        uid               TEXT PRIMARY KEY NOT NULL,
        material_id       TEXT NOT NULL REFERENCES materials(material_id),
        calc_id           TEXT REFERENCES calculations(calc_id),
        property_name     TEXT NOT NULL,
        property_value,
        property_unit     TEXT,
        property_category TEXT,
        extra_json        TEXT NOT NULL DEFAULT '{}',
        created_at        TEXT NOT NULL
    );
CREATE INDEX IF NOT EXISTS properties_by_material ON properties(material_id, property_name);
CREATE TABLE IF NOT EXISTS files (
        uid        TEXT PRIMARY KEY NOT NULL,
        calc_id    TEXT NOT NULL REFERENCES calculations(calc_id),
        file_type  TEXT NOT NULL,
        file_path  TEXT NOT NULL,
        file_hash  TEXT,
        file_size  INTEGER,
        created_at TEXT NOT NULL
    );
CREATE INDEX IF NOT EXISTS files_by_calc ON files(calc_id);
CREATE TABLE IF NOT EXISTS merge_ledger (
        workflow_id  TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        merged_at    TEXT NOT NULL,
        counts       TEXT NOT NULL,
        PRIMARY KEY (workflow_id, content_hash)
    );
CREATE TABLE IF NOT EXISTS merge_conflicts (
        workflow_id      TEXT NOT NULL,
        material_id      TEXT NOT NULL,
        shared_content   TEXT NOT NULL,
        incoming_content TEXT NOT NULL,
        detected_at      TEXT NOT NULL,
        PRIMARY KEY (workflow_id, material_id)
    );
PRAGMA user_version = 1;
