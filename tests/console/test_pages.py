"""Every console page through the Flask test client, on the real emulators: success,
another account's ids (the same 404 page as a missing one), escaping, CSRF refused,
signed-out redirects, and the session's cookie rules."""

from __future__ import annotations

import json
import re

import pytest

from functions.console import session
from shared.entities import ApiKey, Dataset, Evaluation, EvaluationStatus, Model
from tests.console.conftest import HOSTILE, form_csrf, make_tenant, sign_in
from tests.results.conftest import generate, stored_evaluation, upload_result_set
from tests.results.lm_result_sets import write_set

MISSING = {"mdl": "mdl_00000000000000000000", "dst": "dst_00000000000000000000", "evl": "evl_00000000000000000000"}


def pages(world) -> list[str]:
    e, m, d = world.evaluation.id, world.model.id, world.dataset.id
    return [
        "/ui/evaluations",
        "/ui/evaluations/new",
        f"/ui/evaluations/{e}",
        f"/ui/evaluations/{e}/delete",
        f"/ui/evaluations/{e}/cancel",
        "/ui/models",
        f"/ui/models/{m}",
        "/ui/datasets",
        f"/ui/datasets/{d}",
        f"/ui/datasets/{d}/leaderboard",
        "/ui/api",
    ]


def text(response) -> str:
    return response.get_data(as_text=True)


def test_signed_out_pages_redirect_to_sign_in(client, world):
    for path in pages(world):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/ui/sign-in?next="), path
    assert client.post(f"/ui/evaluations/{world.evaluation.id}/delete").status_code == 302
    assert client.get("/ui/").headers["Location"] == "/ui/evaluations"


def test_sign_in_sets_a_strict_httponly_cookie_that_names_the_key_not_holds_it(client, alice):
    api_key = alice.keys["read"]
    response = sign_in(client, api_key)
    assert response.status_code == 303 and response.headers["Location"] == "/ui/evaluations"
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith(session.COOKIE + "="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    assert "Secure" not in cookie  # plain HTTP here; see the HTTPS test
    secret_part = api_key.rsplit("_", 1)[1]
    assert secret_part not in cookie and api_key not in cookie
    page = client.get("/ui/evaluations")
    assert page.status_code == 200 and api_key not in text(page) and secret_part not in text(page)


def test_cookie_is_secure_over_https(client, alice):
    page = client.get("/ui/sign-in", headers={"X-Forwarded-Proto": "https"})
    response = client.post(
        "/ui/sign-in",
        data={"api_key": alice.keys["read"], "csrf": form_csrf(text(page))},
        headers={"X-Forwarded-Proto": "https"},
    )
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith(session.COOKIE + "="))
    assert "Secure" in cookie


def test_a_wrong_key_is_refused_and_never_echoed(client, alice):
    wrong = alice.keys["read"][:-4] + "AAAA"
    response = sign_in(client, wrong)
    assert response.status_code == 401
    assert "invalid API key" in text(response) and wrong not in text(response)
    assert client.get("/ui/evaluations").status_code == 302


def test_sign_in_without_its_csrf_nonce_is_refused(client, alice):
    client.get("/ui/sign-in")
    response = client.post("/ui/sign-in", data={"api_key": alice.keys["read"], "csrf": "forged"})
    assert response.status_code == 403
    assert client.get("/ui/evaluations").status_code == 302


def test_forged_or_expired_session_tokens_are_refused(client, services, alice):
    key = services.store.get(ApiKey, alice.keys["read"].split("_", 1)[1].rsplit("_", 1)[0], account=alice.account)
    forged, _ = session.issue(b"another secret", key, lifetime_s=3600)
    client.set_cookie(session.COOKIE, forged, path="/ui")
    assert client.get("/ui/evaluations").status_code == 302
    expired, _ = session.issue(session.console_secret(services.settings), key, lifetime_s=-10)
    client.set_cookie(session.COOKIE, expired, path="/ui")
    assert client.get("/ui/evaluations").status_code == 302
    good, _ = session.issue(session.console_secret(services.settings), key, lifetime_s=60)
    client.set_cookie(session.COOKIE, good, path="/ui")
    assert client.get("/ui/evaluations").status_code == 200


def test_revoking_the_key_ends_the_session(client, services, alice):
    sign_in(client, alice.keys["read"])
    assert client.get("/ui/models").status_code == 200
    key_id = alice.keys["read"].split("_", 1)[1].rsplit("_", 1)[0]
    services.store.transition(ApiKey, key_id, account=alice.account, expected=["active"], to="revoked")
    response = client.get("/ui/models")
    assert response.status_code == 302 and response.headers["Location"].startswith("/ui/sign-in")


def test_every_page_renders_with_a_strict_csp(client, world, alice):
    sign_in(client, alice.keys["write"])
    for path in pages(world):
        response = client.get(path)
        assert response.status_code == 200, (path, text(response)[:500])
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert response.headers["Cache-Control"] == "no-store"
        assert "<script>" not in text(response)  # no inline script anywhere
    for asset in (
        "/ui/static/console.css",
        "/ui/static/console.js",
        "/ui/swagger/swagger-ui-bundle.js",
        "/ui/swagger/swagger-ui.css",
    ):
        assert client.get(asset).status_code == 200, asset


def test_the_evaluation_page_shows_every_part(client, world, alice):
    sign_in(client, alice.keys["read"])
    html = text(client.get(f"/ui/evaluations/{world.evaluation.id}"))
    assert len(re.findall(r'<rect class="cell"', html)) == 100  # the 10x10 heatmap
    assert 'id="reliability"' in html and html.count('class="bar"') >= 5
    assert 'id="pairs"' in html and 'id="class-table"' in html and "instances per second" in html
    assert len(re.findall(r"<li class=\"(right|wrong)\"", html)) == 24  # one gallery page
    assert 'id="gallery-next"' in html


def test_escaping_hostile_names(client, world, alice):
    sign_in(client, alice.keys["read"])
    for path in (
        f"/ui/evaluations/{world.evaluation.id}",
        f"/ui/evaluations/{world.evaluation.id}?errors=1&label=0",
        f"/ui/models/{world.model.id}",
        f"/ui/datasets/{world.dataset.id}",
    ):
        html = text(client.get(path))
        assert HOSTILE not in html, path
        assert "&lt;img src=x onerror=alert(1)&gt;" in html, path
    # A name typed into a filter comes back escaped too.
    html = text(client.get("/ui/models?labels=" + HOSTILE))
    assert HOSTILE not in html


def test_per_class_table_sorts_by_any_column(client, world, alice):
    sign_in(client, alice.keys["read"])
    for column in ("precision", "recall", "f1", "support", "predicted", "label"):
        for sort in (column, "-" + column):
            html = text(client.get(f"/ui/evaluations/{world.evaluation.id}?sort={sort}"))
            table = html.split('id="class-table"')[1].split("</table>")[0]
            rows = re.findall(
                r"<tr><td>(.*?)</td><td class=\"num\">([\d.]+)</td><td class=\"num\">([\d.]+)</td><td class=\"num\">([\d.]+)</td><td class=\"num\">([\d,]+)</td><td class=\"num\">([\d,]+)</td>",
                table,
            )
            assert len(rows) == 10
            if column != "label":
                index = ("precision", "recall", "f1", "support", "predicted").index(column) + 1
                values = [float(r[index].replace(",", "")) for r in rows]
                assert values == sorted(values, reverse=sort.startswith("-")), sort


def test_gallery_filters_pages_and_images(client, world, alice):
    sign_in(client, alice.keys["read"])
    base = f"/ui/evaluations/{world.evaluation.id}"
    html = text(client.get(base + "?errors=1&order=confidence"))
    assert 'class="right"' not in html.split('id="gallery"')[1]
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) == 24
    shown = set()
    url = base + "?errors=1"
    while url:
        page = text(client.get(url))
        shown |= set(re.findall(r'alt="(img-\d+)"', page))
        nxt = re.search(r'href="([^"]+)" rel="next" id="gallery-next"', page)
        url = nxt.group(1).replace("&amp;", "&").split("#")[0] if nxt else None
    from functions.results import service  # the same code path the JSON route uses
    from shared.results_api import InstancesQuery

    svc = client.application.extensions["assay"]
    cache = service.cache_for(svc.settings, svc.storage)
    everything = service.instances(
        svc.store, cache, world.evaluation.id, InstancesQuery(correct=False, limit=1000), account=alice.account
    )
    assert shown == {i.instance_id for i in everything.items}
    image = client.get(images[0].replace("&amp;", "&"))
    assert image.status_code == 200 and image.mimetype == "image/png" and image.data.startswith(b"\x89PNG")
    tampered = images[0].replace("&amp;", "&").replace("part-0000", "part-0001")
    assert client.get(tampered).status_code == 404
    label_page = text(client.get(base + "?label=class-1&prediction=class-2"))
    assert all(
        "label <strong>class-1</strong>" in li for li in re.findall(r'<li class="(?:right|wrong)">.*?</li>', label_page, re.S)
    )


def test_other_accounts_ids_give_the_same_404_as_missing_ones(client, services, world, bob):
    sign_in(client, bob.keys["write"])
    e, m, d = world.evaluation.id, world.model.id, world.dataset.id
    pairs = [
        (f"/ui/evaluations/{e}", f"/ui/evaluations/{MISSING['evl']}"),
        (f"/ui/evaluations/{e}/delete", f"/ui/evaluations/{MISSING['evl']}/delete"),
        (f"/ui/evaluations/{e}/cancel", f"/ui/evaluations/{MISSING['evl']}/cancel"),
        (f"/ui/models/{m}", f"/ui/models/{MISSING['mdl']}"),
        (f"/ui/datasets/{d}", f"/ui/datasets/{MISSING['dst']}"),
        (f"/ui/datasets/{d}/leaderboard", f"/ui/datasets/{MISSING['dst']}/leaderboard"),
        (
            f"/ui/evaluations/{e}/image?instance=x&part=part-00000.parquet&expires=9999999999&signature=x",
            f"/ui/evaluations/{MISSING['evl']}/image?instance=x&part=part-00000.parquet&expires=9999999999&signature=x",
        ),
        ("/ui/models/not-an-id", "/ui/no/such/page"),
    ]
    for theirs, missing in pairs:
        a, b = client.get(theirs), client.get(missing)
        assert a.status_code == b.status_code == 404, theirs
        assert text(a) == text(b), theirs
        assert "digits" not in text(a)
    # Deleting through the form is refused the same way and changes nothing.
    page = text(client.get("/ui/evaluations"))
    response = client.post(f"/ui/evaluations/{e}/delete", data={"csrf": form_csrf(page)})
    assert response.status_code == 404
    assert services.store.get(Evaluation, e, account=world.evaluation.account).status == EvaluationStatus.complete


def test_alice_cannot_see_bobs_images_with_her_own_signature(client, services, world, alice, bob):
    sign_in(client, alice.keys["read"])
    html = text(client.get(f"/ui/evaluations/{world.evaluation.id}"))
    image = re.findall(r'<img src="([^"]+)"', html)[0].replace("&amp;", "&")
    other = make_tenant(services, "carol")
    client2 = client.application.test_client()
    sign_in(client2, other.keys["read"])
    assert client2.get(image).status_code == 404


def test_state_changes_need_the_csrf_token(client, services, world, alice):
    sign_in(client, alice.keys["write"])
    e = world.evaluation.id
    for data in ({}, {"csrf": "forged"}):
        assert client.post(f"/ui/evaluations/{e}/delete", data=data).status_code == 403
        assert (
            client.post("/ui/evaluations", data={**data, "model_id": world.model.id, "dataset_id": world.dataset.id}).status_code
            == 403
        )
        assert client.post("/ui/sign-out", data=data).status_code == 403
    assert services.store.get(Evaluation, e, account=alice.account).status == EvaluationStatus.complete
    assert client.get("/ui/evaluations").status_code == 200  # still signed in


def test_order_delete_and_sign_out_through_the_forms(client, services, world, alice):
    sign_in(client, alice.keys["write"])
    form = text(client.get(f"/ui/evaluations/new?model_id={world.model.id}"))
    assert f'value="{world.model.id}" selected' in form
    response = client.post(
        "/ui/evaluations",
        data={
            "csrf": form_csrf(form),
            "model_id": world.model.id,
            "dataset_id": world.dataset.id,
            "splits": "test",
            "top_k": "3",
        },
    )
    assert response.status_code == 303
    ordered = services.store.list(Evaluation, account=alice.account, filters={"model_id": world.model.id}).items
    fresh = [x for x in ordered if x.config["top_k"] == 3]
    assert len(fresh) == 1 and fresh[0].status == EvaluationStatus.pending
    listing = text(client.get("/ui/evaluations"))
    assert fresh[0].id in listing and '<meta http-equiv="refresh"' in listing  # refreshes while one runs
    bad = client.post(
        "/ui/evaluations",
        data={
            "csrf": form_csrf(form),
            "model_id": world.model.id,
            "dataset_id": world.dataset.id,
            "splits": "nope",
            "top_k": "3",
        },
    )
    assert bad.status_code == 422 and "has no split nope" in text(bad)
    confirm = text(client.get(f"/ui/evaluations/{fresh[0].id}/delete"))
    assert "cannot be undone" in confirm
    assert client.post(f"/ui/evaluations/{fresh[0].id}/delete", data={"csrf": form_csrf(confirm)}).status_code == 303
    assert services.store.get(Evaluation, fresh[0].id, account=alice.account).status == EvaluationStatus.deleting
    out = client.post("/ui/sign-out", data={"csrf": form_csrf(text(client.get("/ui/evaluations")))})
    assert out.status_code == 303 and client.get("/ui/evaluations").status_code == 302


def test_cancel_through_the_form_and_a_finished_evaluation_says_why_not(client, services, world, alice):
    sign_in(client, alice.keys["write"])
    running = stored_evaluation(services.store, account=alice.account, name="long-run", status="running")
    listing = text(client.get("/ui/evaluations"))
    assert f"/ui/evaluations/{running.id}/cancel" in listing
    assert f"/ui/evaluations/{world.evaluation.id}/cancel" not in listing  # complete: nothing to cancel
    confirm = text(client.get(f"/ui/evaluations/{running.id}/cancel"))
    assert "shards already written are kept" in confirm
    assert client.post(f"/ui/evaluations/{running.id}/cancel", data={}).status_code == 403  # no CSRF token
    response = client.post(f"/ui/evaluations/{running.id}/cancel", data={"csrf": form_csrf(confirm)})
    assert response.status_code == 303 and response.headers["Location"] == f"/ui/evaluations/{running.id}"
    assert services.store.get(Evaluation, running.id, account=alice.account).status == EvaluationStatus.cancelled
    done = client.post(f"/ui/evaluations/{world.evaluation.id}/cancel", data={"csrf": form_csrf(confirm)})
    assert done.status_code == 409 and "complete" in text(done)
    assert services.store.get(Evaluation, world.evaluation.id, account=alice.account).status == EvaluationStatus.complete


def test_a_read_key_cannot_order(client, world, alice):
    sign_in(client, alice.keys["read"])
    assert client.get("/ui/evaluations/new").status_code == 403


def test_lists_filter_and_page(client, services, world, alice):
    sign_in(client, alice.keys["read"])
    assert "digits-vit" in text(client.get("/ui/models?name=digits-vit"))
    assert "digits-vit" not in text(client.get("/ui/models?name=other"))
    assert "digits-vit" not in text(client.get("/ui/models?labels=team%3Dnone"))
    for i in range(3):
        stored_evaluation(services.store, account=alice.account, name=f"extra-{i}", status="pending")
    first = text(client.get("/ui/evaluations?limit=2"))
    nxt = re.search(r'href="([^"]+)" rel="next"', first)
    assert nxt and client.get(nxt.group(1).replace("&amp;", "&")).status_code == 200
    assert client.get("/ui/models?status=bogus").status_code == 422


def test_leaderboard_and_compare(client, services, storage, world, alice, tmp_path):
    other = stored_evaluation(
        services.store,
        account=alice.account,
        model_id=world.model.id,
        dataset_id=world.dataset.id,
        summary={"label_names": world.label_names, "instances": 300, "accuracy": 0.7},
        name="second",
    )
    generated = generate(tmp_path / "second", n=300, classes=10, shards=2, seed=1, skill=3.0)
    (generated.directory / "summary.json").write_text(__import__("json").dumps({"label_names": world.label_names}))
    upload_result_set(storage, other.id, generated.directory)
    sign_in(client, alice.keys["read"])
    board = text(client.get(f"/ui/datasets/{world.dataset.id}/leaderboard?split=test"))
    assert board.index("second") < board.index("digits-vit-digits-test")  # 0.7 ranks above 0.5
    page = text(client.get(f"/ui/compare?a={world.evaluation.id}&b={other.id}"))
    assert "McNemar" in page and 'id="verdict"' in page
    assert client.get(f"/ui/compare?a={world.evaluation.id}&b={world.evaluation.id}").status_code == 200  # agrees with itself


@pytest.mark.parametrize("path", ["/ui/evaluations", "/ui/sign-in"])
def test_pages_never_frame_or_sniff(client, path):
    response = client.get(path)
    assert response.headers["X-Frame-Options"] == "DENY" and response.headers["X-Content-Type-Options"] == "nosniff"


def test_the_key_never_reaches_a_log(client, alice, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    sign_in(client, alice.keys["write"])
    sign_in(client.application.test_client(), alice.keys["write"][:-3] + "xyz")
    client.get("/ui/evaluations")
    secret = alice.keys["write"].rsplit("_", 1)[1]
    assert caplog.records and all(
        secret[:20] not in r.getMessage() and secret[:20] not in str(r.__dict__) for r in caplog.records
    )


def test_the_order_form_orders_a_language_model_evaluation(client, services, alice):
    """Empty fields are not sent (the model's task fills its defaults); the language-model
    fields and the JSON box reach the config; bad JSON is a 422 page, nothing written."""
    common = {"account": alice.account, "status": "ready", "declared_size": 10, "content_type": "application/zip"}
    model = Model(id=Model.new_id(), name="tiny-gpt2", task="text-generation", upload_object="uploads/models/y/m.zip", **common)
    dataset = Dataset(
        id=Dataset.new_id(),
        name="animals",
        task="text-generation",
        shape="generate",
        format="jsonl",
        splits={"train": 20, "test": 50},
        upload_object="uploads/datasets/y/d.jsonl",
        **common,
    )
    services.store.put(model)
    services.store.put(dataset)
    sign_in(client, alice.keys["write"])
    form = text(client.get("/ui/evaluations/new"))
    fields = {
        "csrf": form_csrf(form),
        "model_id": model.id,
        "dataset_id": dataset.id,
        "splits": "test",
        "top_k": "",
        "batch_size": "",
    }
    bad = client.post("/ui/evaluations", data={**fields, "more_config": "{not json"})
    assert bad.status_code == 422 and "more configuration: not JSON" in text(bad)
    response = client.post(
        "/ui/evaluations",
        data={**fields, "num_fewshot": "2", "fewshot_split": "train", "more_config": '{"until": ["\\n"], "ignore_case": true}'},
    )
    assert response.status_code == 303, text(response)
    [ordered] = services.store.list(Evaluation, account=alice.account, filters={"model_id": model.id}).items
    assert ordered.task == "text-generation"
    config = ordered.config
    assert (config["kind"], config["num_fewshot"], config["fewshot_split"]) == ("generate", 2, "train")
    assert config["until"] == ["\n"] and config["ignore_case"] is True and config["batch_size"] == 32


@pytest.mark.parametrize("kind", ["multiple_choice", "generate", "perplexity"])
def test_a_language_model_evaluation_page(client, services, storage, alice, tmp_path, kind):
    """Its kind's metrics and instances (choices with log-likelihoods, outputs, texts), the
    wrong-only filter where the kind has verdicts, and compare with its own metric's name."""
    sets = []
    for i in range(2):
        found = write_set(tmp_path / str(i), kind, seed=i, skill=2.0)
        evaluation = Evaluation(
            id=Evaluation.new_id(),
            account=alice.account,
            name=f"lm-{kind.replace('_', '-')}-{i}",
            model_id="mdl_00000000000000000000",
            dataset_id="dst_00000000000000000000",
            split="test",
            fingerprint=Evaluation.new_id(),
            status="complete",
            task="text-generation",
            config={"kind": kind},
            summary=json.loads((found.directory / "summary.json").read_text()),
        )
        services.store.put(evaluation)
        upload_result_set(storage, evaluation.id, found.directory)
        sets.append((found, evaluation))
    (found, evaluation), (_, other) = sets
    sign_in(client, alice.keys["read"])
    page = client.get(f"/ui/evaluations/{evaluation.id}")
    html = text(page)
    assert page.status_code == 200, html[-2000:]
    assert 'id="lm-instances"' in html and "heatmap" not in html
    if kind == "multiple_choice":
        assert "acc norm" in html and found.columns["choices"][0][0] in html
        assert 'name="errors"' in html
        wrong = text(client.get(f"/ui/evaluations/{evaluation.id}?errors=1"))
        shown = re.findall(r'<tr class="(right|wrong)">', wrong)
        assert shown and set(shown) == {"wrong"}
        compared = client.get(f"/ui/compare?a={evaluation.id}&b={other.id}")
        assert compared.status_code == 200 and "<th>acc</th>" in text(compared)
    elif kind == "generate":
        assert "exact match" in html and "Match" in html
    else:
        assert "bits per byte" in html and 'name="errors"' not in html
