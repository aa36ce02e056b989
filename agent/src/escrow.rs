//! escrow (in progress)
