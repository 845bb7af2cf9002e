//! The browser's side of a passkey ceremony: hand the server's options to
//! `navigator.credentials`, answer the credential as JSON. The options are
//! read with `PublicKeyCredential.parseCreationOptionsFromJSON` /
//! `parseRequestOptionsFromJSON` and the answer written with `toJSON()`
//! (WebAuthn level 3), so no base64 is converted by hand here.

/// Make a new passkey (registration) from the server's options.
#[cfg(feature = "hydrate")]
pub async fn create(options_json: &str) -> Result<String, String> {
    ceremony(options_json, "parseCreationOptionsFromJSON", "create").await
}

/// Sign the server's challenge with one of the person's passkeys.
#[cfg(feature = "hydrate")]
pub async fn sign(options_json: &str) -> Result<String, String> {
    ceremony(options_json, "parseRequestOptionsFromJSON", "get").await
}

#[cfg(feature = "hydrate")]
async fn ceremony(options_json: &str, parse: &str, method: &str) -> Result<String, String> {
    use js_sys::{Function, Object, Promise, Reflect, JSON};
    use wasm_bindgen::{JsCast, JsValue};
    use wasm_bindgen_futures::JsFuture;
    let too_old = "This browser cannot use passkeys here: use a current Chrome, Edge, Firefox or Safari.";
    let get = |on: &JsValue, name: &str| Reflect::get(on, &JsValue::from_str(name)).map_err(|_| too_old.to_owned());
    let window = web_sys::window().ok_or(too_old)?;
    let pkc = get(&window, "PublicKeyCredential")?;
    let parse: Function = get(&pkc, parse)?.dyn_into().map_err(|_| too_old.to_owned())?;
    let options = JSON::parse(options_json).map_err(|_| "The server's passkey options do not parse.".to_owned())?;
    let public_key = parse
        .call1(&pkc, &get(&options, "publicKey")?)
        .map_err(|e| format!("The server's passkey options were refused: {}", describe(&e)))?;
    let arg = Object::new();
    Reflect::set(&arg, &JsValue::from_str("publicKey"), &public_key).map_err(|_| too_old.to_owned())?;
    let credentials = get(&get(&window, "navigator")?, "credentials")?;
    let call: Function = get(&credentials, method)?.dyn_into().map_err(|_| too_old.to_owned())?;
    let promise: Promise = call
        .call1(&credentials, &arg)
        .map_err(|e| describe(&e))?
        .dyn_into()
        .map_err(|_| too_old.to_owned())?;
    let credential = JsFuture::from(promise)
        .await
        .map_err(|e| match error_name(&e).as_deref() {
            Some("NotAllowedError") => "The passkey was not used (cancelled, or it timed out).".to_owned(),
            Some("InvalidStateError") => "That passkey is registered already.".to_owned(),
            _ => format!("The passkey did not answer: {}", describe(&e)),
        })?;
    if credential.is_null() || credential.is_undefined() {
        return Err("No passkey was chosen.".into());
    }
    let to_json: Function = get(&credential, "toJSON")?.dyn_into().map_err(|_| too_old.to_owned())?;
    let json = to_json.call0(&credential).map_err(|e| describe(&e))?;
    JSON::stringify(&json)
        .map(String::from)
        .map_err(|_| "The passkey's answer could not be read.".into())
}

#[cfg(feature = "hydrate")]
fn error_name(e: &wasm_bindgen::JsValue) -> Option<String> {
    js_sys::Reflect::get(e, &"name".into()).ok()?.as_string()
}

#[cfg(feature = "hydrate")]
fn describe(e: &wasm_bindgen::JsValue) -> String {
    js_sys::Reflect::get(e, &"message".into())
        .ok()
        .and_then(|m| m.as_string())
        .unwrap_or_else(|| "unknown error".into())
}
