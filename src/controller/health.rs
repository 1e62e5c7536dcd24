//! `/healthz` (the process answers) and `/readyz` (the controller is
//! watching, as leader or standby) for the Deployment's probes, and `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tracing::{info, warn};

#[derive(Default)]
pub struct Health {
    pub ready: AtomicBool,
}

fn answer(health: &Health, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/metrics" {
        return Response::new(Full::new(Bytes::from(crate::metrics::render())));
    }
    let (code, body) = match req.uri().path() {
        "/healthz" | "/livez" => (StatusCode::OK, "ok"),
        "/readyz" if health.ready.load(Ordering::Relaxed) => (StatusCode::OK, "ok"),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "not watching yet"),
        _ => (StatusCode::NOT_FOUND, "not found"),
    };
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = code;
    r
}

pub async fn serve(addr: SocketAddr, health: Arc<Health>) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(%addr, error = %e, "health endpoint not started");
            return;
        }
    };
    info!(%addr, "health endpoint listening");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let health = health.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let r = answer(&health, &req);
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
