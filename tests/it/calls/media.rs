//! Media streams: the WebSocket a carrier opens for an answered call, speaking Twilio's stream
//! protocol, bound to its call only with the right token and call sid.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use super::{create, outbound, sid, world, World};
use crate::support::{eventually, on_both_backends};

on_both_backends!(world =>
    media_streams_bind_to_their_call,
);

async fn media_streams_bind_to_their_call(w: World) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let call = create(&w, outbound("16505550601")).await;
    let id = uuid::Uuid::parse_str(call["id"].as_str().unwrap()).unwrap();
    let sid = sid(&call);
    w.twilio.status(&sid, "in-progress", &[]).await;
    let (status, twiml) = w.twilio.twiml(&sid).await;
    assert_eq!(status, StatusCode::OK);
    let url = twiml.split("url=\"").nth(1).unwrap().split('"').next().unwrap().replace("&amp;", "&");
    let param = |name: &str| {
        twiml.split(&format!("name=\"{name}\" value=\"")).nth(1).unwrap().split('"').next().unwrap().to_owned()
    };
    let (token, call_param) = (param("token"), param("call_id"));
    assert_eq!(call_param, id.to_string());

    // Speaks Twilio's protocol: connected, start, media (base64 μ-law), stop.
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    let start = json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
                       "start": {"accountSid": w.twilio.state.account_sid, "streamSid": "MZ1", "callSid": sid, "tracks": ["inbound"],
                                 "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                                 "customParameters": {"call_id": call_param, "token": token}}});
    socket
        .send(Message::text(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string()))
        .await
        .unwrap();
    socket.send(Message::text(start.to_string())).await.unwrap();
    let payload = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0xFFu8; 160]);
    for chunk in 1..=5 {
        let media = json!({"event": "media", "sequenceNumber": (chunk + 1).to_string(), "streamSid": "MZ1",
                           "media": {"track": "inbound", "chunk": chunk.to_string(), "timestamp": (chunk * 20).to_string(), "payload": payload}});
        socket.send(Message::text(media.to_string())).await.unwrap();
    }
    socket
        .send(Message::text(
            json!({"event": "stop", "sequenceNumber": "7", "streamSid": "MZ1", "stop": {"callSid": sid}}).to_string(),
        ))
        .await
        .unwrap();
    let stats =
        eventually(Duration::from_secs(5), || async { w.app.state.telephony.streams.get(id).filter(|s| s.closed) })
            .await;
    assert!(stats.bound);
    assert_eq!((stats.media_frames, stats.media_bytes), (5, 800));

    // A stream with a wrong token, or another call's sid, is closed without carrying anything.
    for (token, call_sid) in [("forged".to_owned(), sid.clone()), (token.clone(), "CAotherwise".to_owned())] {
        let other = create(&w, outbound("16505550602")).await;
        let other_id = uuid::Uuid::parse_str(other["id"].as_str().unwrap()).unwrap();
        let other_sid = self::sid(&other);
        let url = url.replace(&id.to_string(), &other_id.to_string());
        let call_sid = if call_sid == sid { other_sid } else { call_sid };
        let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
        let mut start = start.clone();
        start["start"]["callSid"] = json!(call_sid);
        start["start"]["customParameters"] = json!({"call_id": other_id.to_string(), "token": token});
        socket.send(Message::text(start.to_string())).await.unwrap();
        let closed = socket.next().await;
        assert!(matches!(closed, Some(Ok(Message::Close(Some(ref f)))) if u16::from(f.code) == 1008), "{closed:?}");
        assert!(!w.app.state.telephony.streams.get(other_id).unwrap_or_default().bound);
    }
}
