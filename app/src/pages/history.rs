//! `/history`: every proposal of the auditor's tenants with its decisions and
//! execution; filters by tenant, tool, status, person and time; export.

use crate::components::badges::{EnvBadge, StatusBadge};
use crate::components::problem::Problem;
use crate::functions::history::get_history;
use crate::model::HistoryQuery;
use crate::pages::format_time;
use crate::pages::review::Decisions;
use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

fn query_string(q: &HistoryQuery) -> String {
    let pairs = [
        ("tenant", &q.tenant),
        ("tool", &q.tool),
        ("status", &q.status),
        ("person", &q.person),
        ("from", &q.from),
        ("to", &q.to),
    ];
    pairs
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref()
                .filter(|v| !v.is_empty())
                .map(|v| format!("{k}={}", urlencode(v)))
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[component]
pub fn HistoryPage() -> impl IntoView {
    let query = use_query_map();
    let q = move || {
        let m = query.read();
        HistoryQuery {
            tenant: m.get("tenant"),
            tool: m.get("tool"),
            status: m.get("status"),
            person: m.get("person"),
            from: m.get("from"),
            to: m.get("to"),
            cursor: m.get("cursor"),
        }
    };
    let data = Resource::new(q, get_history);
    view! {
        <h1>"History"</h1>
        <form class="filters" method="get" action="/history" aria-label="Filter history">
            <label>"Tenant" <input name="tenant" value=move || q().tenant/></label>
            <label>"Tool" <input name="tool" value=move || q().tool/></label>
            <label>"Status"
                <select name="status">
                    {["", "pending", "approved", "queued", "running", "succeeded", "failed", "rejected", "expired", "cancelled"]
                        .into_iter()
                        .map(|s| view! { <option value=s selected=move || q().status.as_deref() == Some(s)>{if s.is_empty() { "any" } else { s }}</option> })
                        .collect_view()}
                </select>
            </label>
            <label>"Person" <input name="person" value=move || q().person/></label>
            <label>"From" <input name="from" type="date" value=move || q().from/></label>
            <label>"To" <input name="to" type="date" value=move || q().to/></label>
            <button type="submit">"Filter"</button>
        </form>
        <p class="exports">
            "Export the filtered set: "
            <a href=move || format!("/export/history.csv?{}", query_string(&q())) download="history.csv">"CSV"</a>
            " · "
            <a href=move || format!("/export/history.jsonl?{}", query_string(&q())) download="history.jsonl">"JSON lines"</a>
        </p>
        <Transition fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <Problem error=e/> }.into_any(),
                    Ok(page) if page.rows.is_empty() => view! { <p class="empty" role="status">"No proposals match."</p> }.into_any(),
                    Ok(page) => {
                        let next = page.next_cursor.clone().map(|c| {
                            let base = query_string(&q());
                            format!("/history?{base}{}cursor={}", if base.is_empty() { "" } else { "&" }, urlencode(&c))
                        });
                        view! {
                            <table class="history">
                                <thead>
                                    <tr>
                                        <th scope="col">"When"</th>
                                        <th scope="col">"Tool"</th>
                                        <th scope="col">"Where"</th>
                                        <th scope="col">"Status"</th>
                                        <th scope="col">"For"</th>
                                        <th scope="col">"Decisions"</th>
                                        <th scope="col">"Execution"</th>
                                    </tr>
                                </thead>
                                <tbody>
                                    {page.rows.into_iter().map(|r| view! {
                                        <tr>
                                            <td>{format_time(r.created_at_ms)}</td>
                                            <td>
                                                <a href=format!("/proposals/{}", r.id)>{r.tool}</a>
                                                {r.upstream_call.map(|u| view! {
                                                    <small class="gateway">{format!(" MCP: {}/{}", u.upstream, u.tool)}</small>
                                                })}
                                            </td>
                                            <td><EnvBadge tenant=r.tenant env=r.env/></td>
                                            <td>
                                                <StatusBadge status=r.status/>
                                                {r.pii_erased_at_ms.map(|at| view! {
                                                    <span class="badge personal" title=format!("personal data erased on {}", format_time(at))>"personal data erased"</span>
                                                })}
                                            </td>
                                            <td>{r.on_behalf_of.unwrap_or_default()}</td>
                                            <td><Decisions decisions=r.decisions/></td>
                                            <td>{r.execution.map(|x| format!("{} ({} attempt(s))", x.status, x.attempts))}</td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                            {next.map(|href| view! { <p><a href=href rel="next">"Older"</a></p> })}
                        }
                        .into_any()
                    }
                }
            })}
        </Transition>
    }
}
