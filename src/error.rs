//! Errors shared across layers. Each module keeps its own typed error (thiserror) for
//! what it can fail at; this holds only the catch-all a command returns to `main`,
//! which prints it and exits non-zero.

/// What a command (`run`, `check`, `audit`) returns when it cannot go on: any error,
/// already worded for the operator.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
