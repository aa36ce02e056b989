//! swarm (in progress)
