//! The admin API: a separate listener (never the public one) where operators add, replace and
//! remove descriptor sets, read the route table, pull descriptors through gRPC reflection and
//! reload the config, all without a restart.
//!
//! [`LiveRegistry`] owns every change: it builds a complete snapshot off to the side, refuses it
//! whole on any error, writes accepted sets to the [`StateDir`], then publishes with one swap.
//! [`router`] is the HTTP side, a plain axum Router behind a bearer-token check.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod api;
mod diff;
mod error;
mod live;
mod reflect;
mod state_dir;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

pub use diff::{Change, Delta, RouteInfo};
pub use error::AdminError;
pub use live::{ConfigLoader, LiveError, LiveRegistry, Outcome, Reloaded};
pub use reflect::{fetch as reflect_descriptors, ReflectError};
pub use state_dir::{StateDir, StateError};

use crate::config::AdminToken;

/// The admin API's shared state.
#[derive(Debug)]
pub struct Admin {
    live: Arc<LiveRegistry>,
    token: Option<AdminToken>,
    max_upload_bytes: usize,
}

impl Admin {
    /// The API over `live`; with a token, every request must carry it as a bearer token.
    pub fn new(
        live: Arc<LiveRegistry>,
        token: Option<AdminToken>,
        max_upload_bytes: usize,
    ) -> Admin {
        Admin {
            live,
            token,
            max_upload_bytes,
        }
    }

    /// The live registry it changes.
    pub fn live(&self) -> &Arc<LiveRegistry> {
        &self.live
    }
}

/// The admin router.
pub fn router(admin: Arc<Admin>) -> Router {
    api::router(admin)
}

/// Refuses an admin address that would expose the API: a non-loopback address without a token,
/// or the public listener's own address.
pub fn check_exposure(
    admin: SocketAddr,
    public: SocketAddr,
    token: Option<&AdminToken>,
) -> Result<(), String> {
    if token.is_none() && !admin.ip().is_loopback() {
        return Err(format!(
            "the admin API would listen on {admin}, which is not a loopback address, without a \
             token: set --admin-token, PROTOGATE_ADMIN_TOKEN or admin_token, or use a loopback \
             address such as 127.0.0.1:9901"
        ));
    }
    let same_ip =
        admin.ip() == public.ip() || admin.ip().is_unspecified() || public.ip().is_unspecified();
    if admin.port() != 0 && admin.port() == public.port() && same_ip {
        return Err(format!(
            "the admin API must not share the public listener's address {public}"
        ));
    }
    Ok(())
}

/// Serves the admin API on a bound listener until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(admin))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    #[test]
    fn exposure() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let token = AdminToken::new("t");
        let public = addr("127.0.0.1:8080");
        assert!(check_exposure(addr("127.0.0.1:9901"), public, None).is_ok());
        assert!(check_exposure(addr("[::1]:9901"), public, None).is_ok());
        let err = check_exposure(addr("0.0.0.0:9901"), public, None).unwrap_err();
        assert!(err.contains("token"), "{err}");
        assert!(check_exposure(addr("0.0.0.0:9901"), public, token.as_ref()).is_ok());
        assert!(check_exposure(addr("127.0.0.1:8080"), public, None).is_err());
        assert!(check_exposure(addr("127.0.0.1:0"), addr("127.0.0.1:0"), None).is_ok());
    }
}
