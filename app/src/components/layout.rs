//! The frame of every page: header, navigation by role, banners, main.

use crate::error::AppError;
use crate::functions::session::{get_session_info, Logout};
use crate::model::SessionInfo;
use leptos::prelude::*;
use leptos::server_fn::ServerFn;
use leptos_router::hooks::use_location;

pub type SessionResource = Resource<Result<SessionInfo, AppError>>;

/// The session, fetched again on every navigation so sign-in and sign-out
/// show at once.
pub fn use_session() -> SessionResource {
    expect_context::<SessionResource>()
}

#[component]
pub fn Layout(children: Children) -> impl IntoView {
    let location = use_location();
    let session: SessionResource = Resource::new(move || location.pathname.get(), |_| get_session_info());
    provide_context(session);

    view! {
        <header class="top">
            <a class="brand" href="/">"countersign"</a>
            <Transition fallback=|| ()>
                {move || Suspend::new(async move {
                    let info = session.await.unwrap_or_default();
                    view! { <Nav info=info.clone()/> <Banners info/> }
                })}
            </Transition>
        </header>
        <main id="main">{children()}</main>
        <Hydrated/>
    }
}

/// Marks the page interactive once the islands before it are hydrated (they
/// are hydrated in document order, and this is the last). Browser tests wait
/// for `data-hydrated`.
#[island]
fn Hydrated() -> impl IntoView {
    Effect::new(move |_| {
        if let Some(body) = document().body() {
            let _ = body.set_attribute("data-hydrated", "true");
        }
    });
}

#[component]
fn Nav(info: SessionInfo) -> impl IntoView {
    match info.me {
        None => view! {
            <nav aria-label="Main">
                <a href="/login">"Sign in"</a>
            </nav>
        }
        .into_any(),
        Some(me) => {
            let reviewer = me.has("reviewer");
            let auditor = me.has("auditor") || me.has("admin");
            let admin = me.has("admin");
            view! {
                <nav aria-label="Main">
                    {reviewer.then(|| view! { <a href="/">"Queue"</a> })}
                    {auditor.then(|| view! { <a href="/history">"History"</a> })}
                    {auditor.then(|| view! { <a href="/audit">"Audit log"</a> })}
                    {admin.then(|| view! { <a href="/admin">"Admin"</a> })}
                    <a class="who" href="/account" title=format!("Your account ({})", me.roles.join(", "))>{me.username.clone()}</a>
                    // A plain form: the server answers it with a redirect to
                    // the sign-in page, no script needed.
                    <form method="post" action=Logout::url()>
                        <input type="hidden" name="csrf" value=info.csrf.clone()/>
                        <button type="submit" class="quiet">"Sign out"</button>
                    </form>
                </nav>
            }
            .into_any()
        }
    }
}

#[component]
fn Banners(info: SessionInfo) -> impl IntoView {
    (!info.banners.is_empty()).then(|| {
        view! {
            <div class="banners" role="status">
                {info
                    .banners
                    .into_iter()
                    .map(|b| view! { <p class=format!("banner banner-{}", b.kind)>{b.text}</p> })
                    .collect_view()}
            </div>
        }
    })
}
