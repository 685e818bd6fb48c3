-- Upstream MACE's materials database schema, vendored as test data (not used by mace_hpc itself).
-- Source: https://github.com/DjokicMa/MACE, mace/database/materials.py at commit 37601fa5a77991531e5bda5bd7b9b247cc0937ad,
-- MaterialDatabase._initialize_database (the executescript below) followed by the one column
-- _apply_migrations adds to calculations. Tests build an upstream-made materials.db from it.
-- Materials table: Core material information
CREATE TABLE IF NOT EXISTS materials (
    material_id TEXT PRIMARY KEY,
    formula TEXT NOT NULL,
    space_group INTEGER,
    dimensionality TEXT DEFAULT 'CRYSTAL',  -- CRYSTAL, SLAB, POLYMER, MOLECULE
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    source_type TEXT,  -- cif, d12, manual
    source_file TEXT,
    status TEXT DEFAULT 'active',  -- active, archived, error
    metadata_json TEXT,  -- Flexible JSON storage for additional data
    notes TEXT
);

-- Calculations table: Individual calculation tracking
CREATE TABLE IF NOT EXISTS calculations (
    calc_id TEXT PRIMARY KEY,
    material_id TEXT NOT NULL,
    calc_type TEXT NOT NULL,  -- OPT, SP, BAND, DOSS, FREQ, TRANSPORT
    calc_subtype TEXT,  -- e.g., for different functionals
    status TEXT DEFAULT 'pending',  -- pending, submitted, running, completed, failed, cancelled
    priority INTEGER DEFAULT 0,
    
    -- SLURM integration
    slurm_job_id TEXT UNIQUE,
    slurm_state TEXT,  -- PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT
    
    -- Timing information
    created_at TEXT NOT NULL,
    submitted_at TEXT,
    started_at TEXT,
    completed_at TEXT,
    
    -- File tracking
    input_file TEXT,
    output_file TEXT,
    job_script TEXT,
    work_dir TEXT,
    
    -- Calculation settings
    settings_json TEXT,  -- JSON blob for calculation parameters
    
    -- Results and errors
    exit_code INTEGER,
    error_type TEXT,
    error_message TEXT,
    recovery_attempts INTEGER DEFAULT 0,  -- Number of recovery attempts
    completion_type TEXT DEFAULT 'first_try',  -- first_try, recovered, manual
    
    -- Dependencies
    prerequisite_calc_id TEXT,  -- Which calculation this depends on
    
    FOREIGN KEY (material_id) REFERENCES materials (material_id),
    FOREIGN KEY (prerequisite_calc_id) REFERENCES calculations (calc_id)
);

-- Properties table: Extracted material properties
CREATE TABLE IF NOT EXISTS properties (
    property_id INTEGER PRIMARY KEY AUTOINCREMENT,
    material_id TEXT NOT NULL,
    calc_id TEXT,  -- Which calculation produced this property
    property_category TEXT NOT NULL,  -- electronic, structural, thermodynamic
    property_name TEXT NOT NULL,  -- band_gap, work_function, lattice_a, etc.
    property_value REAL,
    property_value_text TEXT,  -- For non-numeric properties
    property_unit TEXT,
    confidence REAL,  -- Quality metric for the property
    extracted_at TEXT NOT NULL,
    extractor_script TEXT,  -- Which script extracted this property
    
    FOREIGN KEY (material_id) REFERENCES materials (material_id),
    FOREIGN KEY (calc_id) REFERENCES calculations (calc_id)
);

-- Files table: Track all files associated with calculations
CREATE TABLE IF NOT EXISTS files (
    file_id INTEGER PRIMARY KEY AUTOINCREMENT,
    calc_id TEXT NOT NULL,
    file_type TEXT NOT NULL,  -- input, output, log, property, plot
    file_name TEXT NOT NULL,
    file_path TEXT NOT NULL,
    file_size INTEGER,
    created_at TEXT NOT NULL,
    checksum TEXT,  -- For integrity checking
    
    FOREIGN KEY (calc_id) REFERENCES calculations (calc_id)
);

-- Workflow templates for common calculation sequences
CREATE TABLE IF NOT EXISTS workflow_templates (
    template_id TEXT PRIMARY KEY,
    template_name TEXT NOT NULL,
    description TEXT,
    workflow_steps_json TEXT NOT NULL,  -- JSON array of calculation types and settings
    created_at TEXT NOT NULL
);

-- Workflow instances: Track progress through calculation sequences
CREATE TABLE IF NOT EXISTS workflow_instances (
    instance_id TEXT PRIMARY KEY,
    material_id TEXT NOT NULL,
    template_id TEXT,  -- Optional: NULL for runtime workflows
    status TEXT DEFAULT 'active',  -- active, completed, failed, paused
    current_step INTEGER DEFAULT 0,
    started_at TEXT NOT NULL,
    completed_at TEXT,
    workflow_config_json TEXT,  -- Full workflow configuration JSON
    workflow_scripts_json TEXT,  -- Generated SLURM scripts and metadata
    
    FOREIGN KEY (material_id) REFERENCES materials (material_id),
    FOREIGN KEY (template_id) REFERENCES workflow_templates (template_id)
);

-- Workflow states: Independent workflow state tracking
CREATE TABLE IF NOT EXISTS workflow_states (
    workflow_id TEXT PRIMARY KEY,
    material_id TEXT NOT NULL,
    planned_sequence TEXT NOT NULL,  -- JSON array of planned steps
    completed_steps TEXT NOT NULL,   -- JSON array of completed steps
    failed_steps TEXT,               -- JSON array of failed steps
    current_step INTEGER DEFAULT 0,
    status TEXT DEFAULT 'active',    -- active, completed, failed, paused
    last_updated TEXT NOT NULL,
    error_count INTEGER DEFAULT 0,
    recovery_count INTEGER DEFAULT 0,
    created_at TEXT NOT NULL,
    notes TEXT,
    
    FOREIGN KEY (material_id) REFERENCES materials (material_id)
);

-- Create indexes for performance
CREATE INDEX IF NOT EXISTS idx_materials_formula ON materials (formula);
CREATE INDEX IF NOT EXISTS idx_materials_status ON materials (status);
CREATE INDEX IF NOT EXISTS idx_calculations_material ON calculations (material_id);
CREATE INDEX IF NOT EXISTS idx_calculations_status ON calculations (status);
CREATE INDEX IF NOT EXISTS idx_calculations_type ON calculations (calc_type);
CREATE INDEX IF NOT EXISTS idx_calculations_slurm ON calculations (slurm_job_id);
CREATE INDEX IF NOT EXISTS idx_properties_material ON properties (material_id);
CREATE INDEX IF NOT EXISTS idx_properties_name ON properties (property_name);
CREATE INDEX IF NOT EXISTS idx_files_calc ON files (calc_id);
CREATE INDEX IF NOT EXISTS idx_workflow_states_material ON workflow_states (material_id);
CREATE INDEX IF NOT EXISTS idx_workflow_states_status ON workflow_states (status);

ALTER TABLE calculations ADD COLUMN input_settings_json TEXT;
