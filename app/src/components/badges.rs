//! Markers a reviewer must not miss: where it runs, how bad it is.

use leptos::prelude::*;

#[component]
pub fn EnvBadge(tenant: String, env: String) -> impl IntoView {
    let class = if env == "prod" || env == "production" {
        "badge env env-prod"
    } else {
        "badge env"
    };
    view! { <span class=class>{tenant}" / "{env}</span> }
}

#[component]
pub fn RiskMarkers(destructive: bool, irreversible: bool) -> impl IntoView {
    view! {
        {destructive.then(|| view! { <span class="badge danger">"destructive"</span> })}
        {irreversible.then(|| view! { <span class="badge danger">"irreversible"</span> })}
    }
}

#[component]
pub fn StatusBadge(status: String) -> impl IntoView {
    let class = format!("badge status status-{status}");
    view! { <span class=class>{status}</span> }
}
