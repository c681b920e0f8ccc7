//! OpenTelemetry: with an OTLP endpoint configured, a Check called with a
//! W3C `traceparent` is exported as a span inside the caller's trace. The
//! collector here is a real OTLP/gRPC receiver run by the test.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use tokenauth::proto::CheckRequest;
use tonic::{Request, Response, Status};

use crate::child::ChildSetup;

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_joins_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let receiving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let setup = ChildSetup::new(&format!(
        "[telemetry]\notlp_endpoint = \"http://{collector_addr}\"\n"
    ));
    let server = setup.start("info").await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_span = "00f067aa0ba902b7";
    let mut request = Request::new(CheckRequest {
        token: "tksat_garbage".into(),
        permission: "scim:read".into(),
        org_id: "org-1".into(),
        workspace_id: String::new(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent_span}-01").parse().unwrap(),
    );
    assert!(
        !server
            .check()
            .check(request)
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    // The batch exporter flushes at shutdown.
    server.signal("TERM");
    assert_eq!(server.wait().await, Some(0));

    let spans = collector.spans.lock().unwrap().clone();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let joined = spans
        .iter()
        .find(|span| hex(&span.trace_id) == trace_id && hex(&span.parent_span_id) == parent_span);
    let joined = joined.unwrap_or_else(|| panic!("no span in the caller's trace among {spans:#?}"));
    assert_eq!(joined.name, "request");
    receiving.abort();
}
