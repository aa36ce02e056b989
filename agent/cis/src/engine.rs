//! One pass over the Docker Engine API: version, info, swarm, networks, images
//! and containers, each read once; every container inspected once.

use std::path::Path;
use std::sync::Arc;

use bollard::models::{ContainerInspectResponse, ContainerSummary, ImageInspect, ImageSummary, LocalNodeState, Network, Swarm, SystemInfo, SystemVersion};
use bollard::query_parameters::{ListContainersOptions, ListImagesOptions, ListNetworksOptions};
use bollard::Docker;

use crate::BenchError;

/// Concurrent inspect requests (the engine serialises little; 16 keeps the
/// socket busy without flooding it).
const INSPECT_CONCURRENCY: usize = 16;
const TIMEOUT_SECS: u64 = 30;

/// What the engine said, gathered once.
#[derive(Debug, Clone, Default)]
pub struct EngineFacts {
    /// `GET /version`
    pub version: SystemVersion,
    /// `GET /info`
    pub info: SystemInfo,
    /// `GET /swarm` (only on an active manager).
    pub swarm: Option<Swarm>,
    /// `GET /containers/json?all=1`
    pub all_containers: Vec<ContainerSummary>,
    /// `GET /containers/{id}/json` of every container, running or not: a created
    /// or stopped container runs with this configuration when it starts.
    pub containers: Vec<ContainerInspectResponse>,
    /// `GET /images/json`
    pub images: Vec<ImageSummary>,
    /// `GET /images/{id}/json` of each image.
    pub image_details: Vec<ImageInspect>,
    /// `GET /images/{id}/history` of each image: (image ID, `CreatedBy` of each layer).
    pub image_history: Vec<(String, Vec<String>)>,
    /// `GET /networks`
    pub networks: Vec<Network>,
}

impl EngineFacts {
    /// Swarm mode active on this node.
    pub fn swarm_active(&self) -> bool {
        self.info.swarm.as_ref().and_then(|s| s.local_node_state.as_ref()) == Some(&LocalNodeState::ACTIVE)
    }
    /// How an image is named in results: `[repo:tag,…]`, else its short ID.
    pub fn image_label(&self, id: &str) -> String {
        match self.images.iter().find(|i| i.id == id).map(|i| &i.repo_tags).filter(|t| !t.is_empty() && t.iter().any(|t| t != "<none>:<none>")) {
            Some(t) => format!("[{}]", t.join(",")),
            None => id.trim_start_matches("sha256:").chars().take(12).collect(),
        }
    }

    /// Containers in state `running`.
    pub fn running(&self) -> usize {
        self.all_containers.iter().filter(|c| c.state.as_ref().map(|s| s.to_string()).as_deref() == Some("running")).count()
    }
    /// Swarm state as the engine reports it (`inactive`, `active`, `locked`…).
    pub fn swarm_state(&self) -> String {
        self.info.swarm.as_ref().and_then(|s| s.local_node_state.as_ref()).map(|s| s.to_string()).filter(|s| !s.is_empty()).unwrap_or_else(|| "inactive".into())
    }
}

fn api_err(socket: &Path, op: &str, e: bollard::errors::Error) -> BenchError {
    BenchError::Engine { socket: socket.to_path_buf(), message: format!("{op}: {e}") }
}

/// Read the engine once.
pub async fn gather(socket: &Path) -> Result<EngineFacts, BenchError> {
    let docker = Docker::connect_with_unix(&socket.to_string_lossy(), TIMEOUT_SECS, bollard::API_DEFAULT_VERSION).map_err(|e| api_err(socket, "connect", e))?;
    // GET /version, then speak the lower of the engine's and bollard's API version.
    let docker = docker.negotiate_version().await.map_err(|e| api_err(socket, "GET /version", e))?;
    let (version, info, all, images, networks) = tokio::join!(
        docker.version(),
        docker.info(),
        docker.list_containers(Some(ListContainersOptions { all: true, ..Default::default() })),
        docker.list_images(None::<ListImagesOptions>),
        docker.list_networks(None::<ListNetworksOptions>),
    );
    let version = version.map_err(|e| api_err(socket, "GET /version", e))?;
    let info = info.map_err(|e| api_err(socket, "GET /info", e))?;
    let all_containers = all.map_err(|e| api_err(socket, "GET /containers/json", e))?;
    let images = images.map_err(|e| api_err(socket, "GET /images/json", e))?;
    let networks = networks.map_err(|e| api_err(socket, "GET /networks", e))?;

    let mut facts = EngineFacts { version, info, all_containers, images, networks, ..Default::default() };
    let manager = facts.info.swarm.as_ref().and_then(|s| s.control_available).unwrap_or(false);
    if facts.swarm_active() && manager {
        // GET /swarm answers only on a manager; a failure leaves the swarm checks to say NOTE.
        facts.swarm = docker.inspect_swarm().await.ok();
    }

    let ids: Vec<String> = facts.all_containers.iter().filter_map(|c| c.id.clone()).collect();
    let image_ids: Vec<String> = facts.images.iter().map(|i| i.id.clone()).collect();
    let docker = Arc::new(docker);
    facts.containers = inspect_all(&docker, ids, |d, id| async move { d.inspect_container(&id, None).await }).await;
    facts.image_details = inspect_all(&docker, image_ids.clone(), |d, id| async move { d.inspect_image(&id).await }).await;
    facts.image_history = inspect_all(&docker, image_ids, |d, id| async move { d.image_history(&id).await.map(|h| (id, h.into_iter().map(|l| l.created_by).collect())) }).await;
    facts.image_history.sort();
    // Stable order: by name.
    facts.containers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(facts)
}

/// Run `f` on each id with bounded concurrency; objects that vanish between the
/// list and the inspect (removed meanwhile) are skipped.
async fn inspect_all<T, F, Fut>(docker: &Arc<Docker>, ids: Vec<String>, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(Arc<Docker>, String) -> Fut,
    Fut: std::future::Future<Output = Result<T, bollard::errors::Error>> + Send + 'static,
{
    let mut out = Vec::with_capacity(ids.len());
    let mut set = tokio::task::JoinSet::new();
    let mut it = ids.into_iter();
    loop {
        while set.len() < INSPECT_CONCURRENCY {
            let Some(id) = it.next() else { break };
            set.spawn(f(docker.clone(), id));
        }
        match set.join_next().await {
            Some(Ok(Ok(v))) => out.push(v),
            Some(_) => {}
            None => break,
        }
    }
    out
}
