"""A check of ours for Schemathesis: every 4xx answer says what is wrong, in a `detail`."""

import schemathesis


@schemathesis.check
def client_errors_have_a_detail(ctx, response, case):
    if not 400 <= response.status_code < 500:
        return None
    try:
        body = response.json()
    except Exception as exc:  # noqa: BLE001 - any non-JSON body fails the check
        raise AssertionError(f"{response.status_code} with a body that is not JSON") from exc
    if not (isinstance(body, dict) and body.get("detail")):
        raise AssertionError(f"{response.status_code} without a detail: {body!r}")
    return True
