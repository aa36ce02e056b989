//! logging (in progress)
