//! Numbers at the carriers: bought through a Twilio account connection or the server's Vonage
//! account, pointed at this server, released when cancelled (a linked one only unlinked), and the
//! carriers' refusals.

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{world, World};
use crate::support::{error_locs, on_both_backends};

on_both_backends!(world =>
    numbers_are_bought_linked_and_released,
);

async fn numbers_are_bought_linked_and_released(w: World) {
    // Twilio, through the account connection.
    let (status, bought) = w
        .app
        .post(
            "/v1/numbers/buy",
            json!({"telephony_provider": "twilio", "area_code": "212", "telephony_account_connection": w.connection}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{bought}");
    assert_eq!(bought["number"], "12125557777");
    assert_eq!((bought["active"].clone(), bought["telephony_provider"].clone()), (json!(true), json!("twilio")));
    assert_eq!(w.twilio.voice_url("+12125557777").unwrap(), format!("{}/telephony/twilio/inbound", w.app.base));
    let (_, cancelled) = w.app.post("/v1/numbers/cancel?phone_number=12125557777", json!(null)).await;
    assert_eq!(cancelled["active"], false);
    assert_eq!(w.twilio.state.released.lock().unwrap().len(), 1, "a bought number is released at the carrier");
    // A linked number is only unlinked.
    let (_, _) = w.app.post("/v1/numbers/cancel?phone_number=14155550100", json!(null)).await;
    assert_eq!(w.twilio.state.released.lock().unwrap().len(), 1);

    // Vonage (the default provider), through the server's account.
    let (status, vonage) = w.app.post("/v1/numbers/buy", json!({"area_code": "646", "inbound_agent": "default"})).await;
    assert_eq!(status, StatusCode::OK, "{vonage}");
    assert_eq!(
        (vonage["number"].clone(), vonage["telephony_provider"].clone()),
        (json!("16465558888"), json!("vonage"))
    );
    assert_eq!(vonage["telephony_account_connection"], Value::Null);
    let ops: Vec<String> = w.vonage.state.numbers.lock().unwrap().iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(ops, ["/number/buy", "/number/update"]);
    let app_id = w.vonage.state.numbers.lock().unwrap()[1].1.get("app_id").cloned();
    assert_eq!(app_id, Some(w.vonage.state.application_id.clone()), "attached to the application");
    w.app.post("/v1/numbers/cancel?phone_number=16465558888", json!(null)).await;
    assert_eq!(w.vonage.state.numbers.lock().unwrap().last().unwrap().0, "/number/cancel");

    // Refusals and bad input.
    let (status, body) = w
        .app
        .post(
            "/v1/numbers/buy",
            json!({"telephony_provider": "twilio", "area_code": "999", "telephony_account_connection": w.connection}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no numbers there: {body}");
    let (status, body) = w.app.post("/v1/numbers/buy", json!({"area_code": "41"})).await;
    assert_eq!((status, error_locs(&body)), (StatusCode::UNPROCESSABLE_ENTITY, vec!["body.area_code".to_owned()]));
    let (status, _) = w.app.post("/v1/numbers/buy", json!({"telephony_provider": "sprint"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, body) = w
        .app
        .post(
            "/v1/numbers/buy",
            json!({"telephony_provider": "twilio", "telephony_account_connection": uuid::Uuid::new_v4()}),
        )
        .await;
    assert_eq!(
        (status, error_locs(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, vec!["body.telephony_account_connection".to_owned()])
    );
    // Twilio without a connection needs the server's own account, which this server lacks.
    let (status, body) = w.app.post("/v1/numbers/buy", json!({"telephony_provider": "twilio"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().unwrap().contains("TWILIO_ACCOUNT_SID"));
    // Linking a number the Twilio account does not have.
    let (status, body) = w
        .app
        .post("/v1/numbers/link", json!({"phone_number": "14155550999", "telephony_account_connection": w.connection}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().unwrap().contains("not a number of this Twilio account"));
}
