//! countersign: a human-approval gate for AI agents' tool calls.
//!
//! This crate is the web application: pages, components and server functions
//! (both sides), and the view types they share. Behind `ssr`, server
//! functions call `countersign_core`, which enforces every rule.

#![recursion_limit = "512"]

pub mod components;
pub mod error;
pub mod functions;
pub mod model;
pub mod pages;

use components::layout::Layout;
use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Stylesheet, Title};
use leptos_router::components::{Route, Router, Routes};
use leptos_router::{path, SsrMode};
use pages::{
    account::AccountPage, admin::AdminPage, audit::AuditPage, history::HistoryPage, login::LoginPage,
    not_found::NotFound, queue::QueuePage, review::ReviewPage,
};

/// The HTML document around the app, rendered on the server. Navigation is
/// by ordinary page loads; the interactive parts are islands (`#[island]`).
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <AutoReload options=options.clone()/>
                <HydrationScripts options islands=true/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    view! {
        <Stylesheet id="leptos" href="/pkg/countersign.css"/>
        <Title text="countersign"/>
        <Router>
            <Layout>
                <Routes fallback=|| view! { <NotFound/> }>
                    <Route path=path!("/") view=QueuePage ssr=SsrMode::Async/>
                    <Route path=path!("/login") view=LoginPage ssr=SsrMode::Async/>
                    <Route path=path!("/proposals/:id") view=ReviewPage ssr=SsrMode::Async/>
                    <Route path=path!("/history") view=HistoryPage ssr=SsrMode::Async/>
                    <Route path=path!("/audit") view=AuditPage ssr=SsrMode::Async/>
                    <Route path=path!("/admin") view=AdminPage ssr=SsrMode::Async/>
                    <Route path=path!("/account") view=AccountPage ssr=SsrMode::Async/>
                </Routes>
            </Layout>
        </Router>
    }
}

#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    // Islands mode: the server renders every page; only the `#[island]`
    // components are in the wasm, and the hydration script hydrates each.
    leptos::mount::hydrate_islands();
}
