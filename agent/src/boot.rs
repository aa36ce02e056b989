//! boot (in progress)
