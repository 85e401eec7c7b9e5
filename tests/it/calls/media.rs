//! Media streams: the WebSocket a carrier opens for an answered call, bound to its call only with
//! the right token and call sid, carrying audio both ways in each carrier's protocol.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use super::{create, outbound, sid, world, World};
use crate::support::{eventually, on_both_backends};

on_both_backends!(world =>
    media_streams_bind_to_their_call,
    a_twilio_stream_carries_audio_marks_and_clears_to_the_call,
    a_vonage_stream_carries_audio_notifies_and_clears_to_the_call,
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

/// The next text message of a carrier-side socket, as JSON (binary messages are skipped).
async fn next_json<S>(socket: &mut S) -> serde_json::Value
where
    S: futures_util::Stream<
            Item = Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>,
        > + Unpin,
{
    use futures_util::StreamExt;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next()).await.expect("a message in time");
        match message {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                return serde_json::from_str(text.as_str()).unwrap()
            }
            Some(Ok(_)) => continue,
            other => panic!("the stream ended: {other:?}"),
        }
    }
}

async fn a_twilio_stream_carries_audio_marks_and_clears_to_the_call(w: World) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use vocode_server::telephony::media::{AudioFormat, ToCall};

    let call = create(&w, outbound("16505550603")).await;
    let id = uuid::Uuid::parse_str(call["id"].as_str().unwrap()).unwrap();
    let sid = sid(&call);
    w.twilio.status(&sid, "in-progress", &[]).await;
    let (_, twiml) = w.twilio.twiml(&sid).await;
    let url = twiml.split("url=\"").nth(1).unwrap().split('"').next().unwrap().replace("&amp;", "&");
    let param = |name: &str| {
        twiml.split(&format!("name=\"{name}\" value=\"")).nth(1).unwrap().split('"').next().unwrap().to_owned()
    };
    assert!(w.app.state.sessions.port(id).is_none(), "no port before the stream is bound");
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    let start = json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZ7",
                       "start": {"accountSid": w.twilio.state.account_sid, "streamSid": "MZ7", "callSid": sid,
                                 "customParameters": {"call_id": param("call_id"), "token": param("token")}}});
    socket.send(Message::text(start.to_string())).await.unwrap();
    let port = eventually(Duration::from_secs(5), || async { w.app.state.sessions.port(id) }).await;
    assert_eq!(port.format, AudioFormat::Mulaw8k);

    // What is sent to the call reaches Twilio framed as its protocol says, in order.
    port.to_call.send(ToCall::Audio(vec![0x7f; 160])).await.unwrap();
    port.to_call.send(ToCall::Mark("turn-1".into())).await.unwrap();
    port.to_call.send(ToCall::Clear).await.unwrap();
    let media = next_json(&mut socket).await;
    assert_eq!((media["event"].as_str(), media["streamSid"].as_str()), (Some("media"), Some("MZ7")));
    let payload = media["media"]["payload"].as_str().unwrap();
    assert_eq!(base64::Engine::decode(&base64::engine::general_purpose::STANDARD, payload).unwrap(), vec![0x7f; 160]);
    assert_eq!(next_json(&mut socket).await, json!({"event": "mark", "streamSid": "MZ7", "mark": {"name": "turn-1"}}));
    assert_eq!(next_json(&mut socket).await, json!({"event": "clear", "streamSid": "MZ7"}));

    // Twilio's echo of the mark (once played) and the person's key presses are recorded.
    let mark = json!({"event": "mark", "sequenceNumber": "3", "streamSid": "MZ7", "mark": {"name": "turn-1"}});
    let dtmf = json!({"event": "dtmf", "sequenceNumber": "4", "streamSid": "MZ7", "dtmf": {"track": "inbound_track", "digit": "7"}});
    socket.send(Message::text(mark.to_string())).await.unwrap();
    socket.send(Message::text(dtmf.to_string())).await.unwrap();
    socket.send(Message::text(json!({"event": "stop", "streamSid": "MZ7"}).to_string())).await.unwrap();
    let stats =
        eventually(Duration::from_secs(5), || async { w.app.state.telephony.streams.get(id).filter(|s| s.closed) })
            .await;
    assert_eq!((stats.marks_played, stats.dtmf.as_str(), stats.sent_bytes), (vec!["turn-1".to_owned()], "7", 160));
    assert!(w.app.state.sessions.port(id).is_none(), "a closed stream has no port");
}

async fn a_vonage_stream_carries_audio_notifies_and_clears_to_the_call(w: World) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use vocode_server::telephony::media::{AudioFormat, ToCall};

    let (_, number) = w.app.post("/v1/numbers/buy", json!({"telephony_provider": "vonage", "area_code": "646"})).await;
    let mut body = outbound("16505550904");
    body["from_number"] = number["number"].clone();
    let call = create(&w, body).await;
    let id = uuid::Uuid::parse_str(call["id"].as_str().unwrap()).unwrap();
    let placed = w.vonage.calls().into_iter().find(|c| c.uuid == sid(&call)).unwrap();
    let connect = placed.body["ncco"].as_array().unwrap().iter().find(|a| a["action"] == "connect").unwrap().clone();
    let endpoint = &connect["endpoint"][0];
    assert_eq!(endpoint["content-type"], "audio/l16;rate=16000");
    let (mut socket, _) = tokio_tungstenite::connect_async(endpoint["uri"].as_str().unwrap()).await.unwrap();
    // Vonage flattens the NCCO's headers into its first message.
    let mut connected = endpoint["headers"].clone();
    connected["event"] = json!("websocket:connected");
    connected["content-type"] = json!("audio/l16;rate=16000");
    socket.send(Message::text(connected.to_string())).await.unwrap();
    let port = eventually(Duration::from_secs(5), || async { w.app.state.sessions.port(id) }).await;
    assert_eq!(port.format, AudioFormat::Linear16k);

    // 1,000 bytes of audio go out as two whole 640-byte frames, the second padded with silence.
    port.to_call.send(ToCall::Audio(vec![3; 1000])).await.unwrap();
    port.to_call.send(ToCall::Mark("turn-2".into())).await.unwrap();
    port.to_call.send(ToCall::Clear).await.unwrap();
    let mut frames = Vec::new();
    while frames.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), socket.next()).await.unwrap() {
            Some(Ok(Message::Binary(frame))) => frames.push(frame),
            other => panic!("audio first: {other:?}"),
        }
    }
    assert_eq!(frames.iter().map(|f| f.len()).collect::<Vec<_>>(), vec![640, 640]);
    assert!(frames[1][..360].iter().all(|b| *b == 3) && frames[1][360..].iter().all(|b| *b == 0));
    assert_eq!(next_json(&mut socket).await, json!({"action": "notify", "payload": {"mark": "turn-2"}}));
    assert_eq!(next_json(&mut socket).await, json!({"action": "clear"}));

    let notify = json!({"event": "websocket:notify", "payload": {"mark": "turn-2"}});
    socket.send(Message::text(notify.to_string())).await.unwrap();
    socket
        .send(Message::text(json!({"event": "websocket:dtmf", "digit": "5", "duration": 260}).to_string()))
        .await
        .unwrap();
    socket.send(Message::Binary(vec![0u8; 640].into())).await.unwrap();
    socket.close(None).await.unwrap();
    let stats =
        eventually(Duration::from_secs(5), || async { w.app.state.telephony.streams.get(id).filter(|s| s.closed) })
            .await;
    assert_eq!((stats.marks_played, stats.dtmf.as_str()), (vec!["turn-2".to_owned()], "5"));
    assert_eq!((stats.media_frames, stats.media_bytes, stats.sent_bytes), (1, 640, 1000));
}
