//! The OpenAPI 3 document: its paths come from the handlers' annotations as
//! the router registers them (`api::router`); this adds the rest. What is
//! served is completed for this deployment: the answers every operation can
//! give (a credential of the wrong kind, a throttle, a body over the limit),
//! and the loaded policy's routes, tools and each tool's args schema, so
//! that a request the document calls valid is one the server accepts.

use super::error::{ErrorBody, ErrorInner};
use super::types::*;
use axum::extract::State;
use axum::Json;
use countersign_core::policy::{Policy, PreviewBy, ToolKind};
use countersign_core::service::Core;
use serde_json::{json, Value};
use std::sync::Arc;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "countersign", description = "A human-approval gate for AI agents' tool calls: the agent, orchestrator and executor API."),
    components(schemas(
        ErrorBody, ErrorInner, MintRunBody, MintRunResponse, Budgets, CheckBody, CheckResponse, PreviewBody,
        ProposeBody, ProposalResponse, Approval, DecisionBody, ExecutionBody, ClaimBody, ClaimResponse, JobBody,
        HeartbeatBody, HeartbeatResponse, CompleteBody, CompleteResponse, PreviewReportBody, JobKindBody, Outcome,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "orchestrator", description = "Service keys mint runs"),
        (name = "agent", description = "Run tokens check, propose and read their own proposals"),
        (name = "executor", description = "Executor keys claim and complete approved jobs"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        }
    }
}

/// The document as the router was built with it, in JSON, completed with
/// the answers every operation may give.
pub fn base(doc: &utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(doc).unwrap_or_else(|_| json!({}));
    add_common_responses(&mut doc);
    split_completion(&mut doc);
    doc
}

/// A completion that failed carries no preview (a failed dry run says why in
/// `result`): the body is one of two shapes, by `status`.
fn split_completion(doc: &mut Value) {
    let body = &mut doc["components"]["schemas"]["CompleteBody"];
    if body.get("properties").is_none() {
        return;
    }
    let mut succeeded = body.clone();
    succeeded["properties"]["status"] = json!({ "type": "string", "const": "succeeded" });
    let mut failed = body.clone();
    failed["properties"]["status"] = json!({ "type": "string", "const": "failed" });
    if let Some(p) = failed["properties"].as_object_mut() {
        p.remove("preview");
    }
    *body = json!({ "oneOf": [succeeded, failed] });
}

/// Served at `/api/v1/openapi.json`: the base document and the policy
/// loaded now.
pub async fn spec(State((core, doc)): State<(Arc<Core>, Arc<Value>)>) -> Json<Value> {
    let mut doc = (*doc).clone();
    with_policy(&mut doc, &core.policy());
    Json(doc)
}

fn error(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } },
    })
}

/// Answers any operation can give, added where an operation does not name
/// them itself: 401 without a valid credential, 403 with a credential of
/// another kind (or a route, tool or run it may not use), 429 when its
/// holder is throttled; with a body or a query, 400 for one that does not
/// parse and 413 for a body over 64 KiB.
fn add_common_responses(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for op in item.values_mut() {
            let has_body = op.get("requestBody").is_some();
            let has_query = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            let mut add = |code: &str, description: &str| {
                responses.entry(code.to_owned()).or_insert_with(|| error(description));
            };
            add(
                "401",
                "unauthenticated: no credential, or one that is unknown, expired or revoked",
            );
            add(
                "403",
                "forbidden: a credential of another kind, or a route, tool or job it may not use",
            );
            add(
                "429",
                "rate_limited or budget_exhausted: wait (retry_after_seconds) and retry",
            );
            if has_body || has_query {
                add("400", "bad_request: the request does not parse or is out of bounds");
            }
            if has_body {
                add("413", "payload_too_large: the body is over 64 KiB");
            }
        }
    }
}

/// Name this deployment's routes and tools where requests carry them, and
/// give each tool's proposal body its own schema: its args, whether an
/// idempotency key is required (writes), and whether the agent may send a
/// preview (not where the executor computes it).
pub fn with_policy(doc: &mut Value, policy: &Policy) {
    let schemas = &mut doc["components"]["schemas"];
    let routes: Vec<&String> = policy.routes.keys().collect();
    let tools: Vec<&String> = policy.tools.keys().collect();
    schemas["MintRunBody"]["properties"]["route"]["enum"] = json!(routes);
    schemas["CheckBody"]["properties"]["tool"]["enum"] = json!(tools);
    let base = schemas["ProposeBody"].clone();
    let variants: Vec<Value> = policy
        .tools
        .values()
        .map(|tool| {
            let mut v = base.clone();
            let props = &mut v["properties"];
            props["tool"] = json!({ "type": "string", "const": tool.name });
            props["args"] = tool.args.json_schema();
            if tool.preview == PreviewBy::Executor {
                if let Some(p) = props.as_object_mut() {
                    p.remove("preview");
                }
            }
            let mut required = vec!["tool", "args"];
            if tool.kind == ToolKind::Write {
                required.push("idempotency_key");
                props["idempotency_key"]["type"] = json!("string");
            }
            v["required"] = json!(required);
            v["title"] = json!(tool.name);
            v
        })
        .collect();
    if !variants.is_empty() {
        schemas["ProposeBody"] = json!({
            "description": base.get("description").cloned().unwrap_or(Value::Null),
            "oneOf": variants,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> Value {
        let policy = countersign_core::policy::load_policy(include_str!("../../../examples/policy.toml")).unwrap();
        let (_, doc) = utoipa_axum::router::OpenApiRouter::<Arc<Core>>::with_openapi(ApiDoc::openapi())
            .nest("/api/v1", super::super::operations())
            .split_for_parts();
        let mut doc = base(&doc);
        with_policy(&mut doc, &policy);
        doc
    }

    #[test]
    fn every_operation_documents_the_wrong_credential_and_the_throttle() {
        let doc = served();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for code in ["401", "403", "429"] {
                    assert!(op["responses"][code].is_object(), "{method} {path} lacks {code}");
                }
                if op.get("requestBody").is_some() {
                    assert!(op["responses"]["413"].is_object(), "{method} {path} lacks 413");
                }
            }
        }
    }

    #[test]
    fn each_tool_has_its_own_proposal_schema_from_the_policy() {
        let doc = served();
        let variants = doc["components"]["schemas"]["ProposeBody"]["oneOf"].as_array().unwrap();
        let close = variants.iter().find(|v| v["title"] == "ticket.close").unwrap();
        assert_eq!(close["properties"]["tool"]["const"], "ticket.close");
        assert!(close["required"]
            .as_array()
            .unwrap()
            .contains(&json!("idempotency_key")));
        assert_eq!(close["properties"]["args"]["additionalProperties"], false);
        // ticket.assign's executor computes the preview: the agent may not send one.
        let assign = variants.iter().find(|v| v["title"] == "ticket.assign").unwrap();
        assert!(assign["properties"].get("preview").is_none());
        let search = variants.iter().find(|v| v["title"] == "kb.search").unwrap();
        assert!(!search["required"]
            .as_array()
            .unwrap()
            .contains(&json!("idempotency_key")));
        let routes = &doc["components"]["schemas"]["MintRunBody"]["properties"]["route"]["enum"];
        assert!(routes.as_array().unwrap().contains(&json!("support/send")));
    }
}
