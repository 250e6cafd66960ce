//! The benchmark backend: echoes, as cheaply as a real tonic service can.

use std::pin::Pin;

use futures_util::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::bench::v1::{bench_service_server::BenchService, Large, Small};

/// Echoes every message it gets.
#[derive(Debug, Default, Clone, Copy)]
pub struct BenchEcho;

type SmallStream = Pin<Box<dyn Stream<Item = Result<Small, Status>> + Send>>;

#[tonic::async_trait]
impl BenchService for BenchEcho {
    async fn echo(&self, request: Request<Small>) -> Result<Response<Small>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    async fn echo_large(&self, request: Request<Large>) -> Result<Response<Large>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    type ChatStream = SmallStream;

    async fn chat(
        &self,
        request: Request<Streaming<Small>>,
    ) -> Result<Response<SmallStream>, Status> {
        Ok(Response::new(Box::pin(request.into_inner())))
    }
}
