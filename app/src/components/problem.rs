//! How a page says something went wrong.

use crate::error::AppError;
use leptos::prelude::*;

/// An error as a page section. On the server it also sets the status code, so
/// a page someone may not see is a real 404.
#[component]
pub fn Problem(error: AppError) -> impl IntoView {
    #[cfg(feature = "ssr")]
    {
        use axum::http::StatusCode;
        if let Some(res) = use_context::<leptos_axum::ResponseOptions>() {
            res.set_status(match &error {
                AppError::NotFound => StatusCode::NOT_FOUND,
                AppError::SignedOut => StatusCode::UNAUTHORIZED,
                AppError::Forbidden(_) => StatusCode::FORBIDDEN,
                AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            });
        }
    }
    let signed_out = matches!(error, AppError::SignedOut);
    let title = match &error {
        AppError::NotFound => "Not found",
        AppError::SignedOut => "Signed out",
        AppError::Forbidden(_) => "Not allowed",
        _ => "Something went wrong",
    };
    view! {
        <section class="problem">
            <h1>{title}</h1>
            <p role="alert">{error.to_string()}</p>
            {signed_out.then(|| view! { <p><a href="/login">"Sign in"</a></p> })}
        </section>
    }
}

/// A one-line error beside a form.
#[component]
pub fn FormError(#[prop(into)] message: Signal<Option<String>>) -> impl IntoView {
    view! { <p class="form-error" role="alert">{move || message.get()}</p> }
}
