//! A small upstream MCP server for tests and the bench (rmcp, Streamable
//! HTTP): a read tool, write tools (one echoing its args), a bearer token it
//! insists on, counters of what it was sent, and gates that hold its
//! handshake or its calls.
#![allow(dead_code)]

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, InitializeRequestParams, InitializeResult,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, ServerHandler};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One call the upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub tool: String,
    pub args: Value,
    pub meta: Value,
}

pub struct UpstreamState {
    pub calls: Mutex<Vec<Received>>,
    pub initializes: AtomicUsize,
    pub unauthorized: AtomicUsize,
    /// While true, `initialize` waits.
    pub hold_handshake: watch::Sender<bool>,
    /// While true, calls of close_ticket wait (after being counted).
    pub hold_calls: watch::Sender<bool>,
}

impl UpstreamState {
    pub fn calls_of(&self, tool: &str) -> Vec<Received> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.tool == tool)
            .cloned()
            .collect()
    }
}

#[derive(Clone)]
struct Tickets {
    state: Arc<UpstreamState>,
}

fn schema(v: Value) -> Arc<JsonObject> {
    match v {
        Value::Object(m) => Arc::new(m),
        _ => Arc::new(JsonObject::new()),
    }
}

impl ServerHandler for Tickets {
    fn get_info(&self) -> ServerConfig {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        self.state.initializes.fetch_add(1, Ordering::SeqCst);
        let mut held = self.state.hold_handshake.subscribe();
        let _ = held.wait_for(|h| !*h).await;
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let open = json!({ "type": "object" });
        Ok(ListToolsResult::with_all_items(vec![
            Tool::new("search", "Search tickets by text.", schema(open.clone())),
            Tool::new("close_ticket", "Close a ticket.", schema(open.clone())),
            Tool::new("refund", "Refund a customer.", schema(open.clone())),
            Tool::new("send_mail", "Send a mail; says where it went.", schema(open.clone())),
            Tool::new("wipe", "Wipe the database.", schema(open)),
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = Value::Object(request.arguments.clone().unwrap_or_default());
        // rmcp hands the request's `_meta` over in the context.
        let meta = Value::Object(context.meta.0 .0.clone());
        self.state.calls.lock().unwrap().push(Received {
            tool: request.name.to_string(),
            args: args.clone(),
            meta,
        });
        let result = match request.name.as_ref() {
            "search" => {
                let q = args["query"].as_str().unwrap_or("");
                let mut r = CallToolResult::success(vec![ContentBlock::text(format!("found 1 ticket for {q}"))]);
                r.structured_content = Some(json!({ "hits": [{ "id": "T-1", "title": q }] }));
                r
            }
            "close_ticket" => {
                let mut held = self.state.hold_calls.subscribe();
                let _ = held.wait_for(|h| !*h).await;
                let id = args["ticket_id"].as_str().unwrap_or("?");
                CallToolResult::success(vec![ContentBlock::text(format!("closed {id}"))])
            }
            "refund" => CallToolResult::error(vec![ContentBlock::text("card declined")]),
            // Echoes what it was sent, as many real tools do: in its text,
            // and in its structured content (numbers as numbers). A mail
            // whose subject is "bounce" fails, naming the address; one whose
            // subject is "refuse" is a protocol error naming it.
            "send_mail" => {
                let to = args["to"].as_str().unwrap_or("?");
                if args["subject"] == "refuse" {
                    return Err(ErrorData::invalid_params(format!("no mailbox {to}"), None));
                }
                if args["subject"] == "bounce" {
                    CallToolResult::error(vec![ContentBlock::text(format!("cannot deliver to {to}"))])
                } else {
                    let mut r = CallToolResult::success(vec![ContentBlock::text(format!("mail sent to {to}"))]);
                    r.structured_content = Some(json!({ "sent_to": to, "sms_to": args["phone"] }));
                    r
                }
            }
            other => return Err(ErrorData::invalid_params(format!("no tool {other}"), None)),
        };
        Ok(result.into())
    }
}

pub struct TestUpstream {
    pub state: Arc<UpstreamState>,
    pub port: u16,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl TestUpstream {
    /// Serve on `port` (0: any), insisting on `Authorization: Bearer <token>`.
    pub async fn start(port: u16, token: &str) -> TestUpstream {
        let state = Arc::new(UpstreamState {
            calls: Mutex::default(),
            initializes: AtomicUsize::new(0),
            unauthorized: AtomicUsize::new(0),
            hold_handshake: watch::channel(false).0,
            hold_calls: watch::channel(false).0,
        });
        Self::serve(port, token, state).await
    }

    /// Serve again, with the same counters (after `stop`).
    pub async fn restart(port: u16, token: &str, state: Arc<UpstreamState>) -> TestUpstream {
        Self::serve(port, token, state).await
    }

    async fn serve(port: u16, token: &str, state: Arc<UpstreamState>) -> TestUpstream {
        let stop = CancellationToken::new();
        let handler = Tickets { state: state.clone() };
        let service = StreamableHttpService::new(
            move || Ok(handler.clone()),
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default().with_cancellation_token(stop.clone()),
        );
        let expected = format!("Bearer {token}");
        let guard_state = state.clone();
        let app = axum::Router::new()
            .route_service("/mcp", service)
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let ok =
                        req.headers().get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str());
                    let state = guard_state.clone();
                    async move {
                        if ok {
                            next.run(req).await
                        } else {
                            state.unauthorized.fetch_add(1, Ordering::SeqCst);
                            axum::response::IntoResponse::into_response(axum::http::StatusCode::UNAUTHORIZED)
                        }
                    }
                },
            ));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let until = stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { until.cancelled().await })
                .await;
        });
        TestUpstream {
            state,
            port,
            stop,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// Stop answering: sessions end, the port closes.
    pub async fn stop(self) -> Arc<UpstreamState> {
        self.stop.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.task).await;
        self.state
    }
}
