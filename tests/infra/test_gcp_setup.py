"""infra/gcp/setup.sh: least privilege, the resources it makes, idempotence, gcloud syntax.

The script runs for real against a recording gcloud (tests/infra/fakes); the recorded
command lines are then put through the installed Cloud SDK's own parser.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

PROJECT = "assay-test"
BUCKET = f"{PROJECT}-assay"


def sa(name: str) -> str:
    return f"serviceAccount:{name}@{PROJECT}.iam.gserviceaccount.com"


PUBSUB_AGENT = "serviceAccount:service-123456789012@gcp-sa-pubsub.iam.gserviceaccount.com"
GCS_AGENT = "serviceAccount:service-123456789012@gs-project-accounts.iam.gserviceaccount.com"
UPLOADS_ONLY = f"expression=resource.name.startsWith('projects/_/buckets/{BUCKET}/objects/uploads/'),title=uploads-only"

# The whole grant table: (member, role, resource). Anything more is a privilege nobody needs.
EXPECTED_GRANTS = {
    # functions: Datastore, read the bucket, write uploads/ only, publish hints, sign URLs
    (sa("assay-functions"), "roles/datastore.user", f"project:{PROJECT}"),
    (sa("assay-functions"), "roles/storage.objectViewer", f"gs://{BUCKET}"),
    (sa("assay-functions"), "roles/storage.objectUser", f"gs://{BUCKET} if {UPLOADS_ONLY}"),
    (sa("assay-functions"), "roles/pubsub.publisher", "topic:assay-hints"),
    (sa("assay-functions"), "roles/iam.serviceAccountTokenCreator", f"sa:assay-functions@{PROJECT}.iam.gserviceaccount.com"),
    # ... and read the two secrets the api needs (storage_events runs as it too)
    (sa("assay-functions"), "roles/secretmanager.secretAccessor", "secret:assay-webhook-signing-key"),
    (sa("assay-functions"), "roles/secretmanager.secretAccessor", "secret:assay-console-secret"),
    # the Eventarc trigger's identity: invoking, nothing else
    (sa("assay-invoker"), "roles/run.invoker", f"project:{PROJECT}"),
    # daemon: Datastore, delete stored data, pull hints, be itself from GKE
    (sa("assay-daemon"), "roles/datastore.user", f"project:{PROJECT}"),
    (sa("assay-daemon"), "roles/storage.objectUser", f"gs://{BUCKET}"),
    (sa("assay-daemon"), "roles/pubsub.subscriber", "subscription:assay-daemon-hints"),
    (
        f"serviceAccount:{PROJECT}.svc.id.goog[assay/assay-daemon]",
        "roles/iam.workloadIdentityUser",
        f"sa:assay-daemon@{PROJECT}.iam.gserviceaccount.com",
    ),
    # workers: Datastore, read inputs and write results
    (sa("assay-worker"), "roles/datastore.user", f"project:{PROJECT}"),
    (sa("assay-worker"), "roles/storage.objectUser", f"gs://{BUCKET}"),
    (
        f"serviceAccount:{PROJECT}.svc.id.goog[assay/assay-worker]",
        "roles/iam.workloadIdentityUser",
        f"sa:assay-worker@{PROJECT}.iam.gserviceaccount.com",
    ),
    # deployer (Cloud Build)
    (sa("assay-deployer"), "roles/cloudbuild.builds.builder", f"project:{PROJECT}"),
    (sa("assay-deployer"), "roles/cloudfunctions.developer", f"project:{PROJECT}"),
    (sa("assay-deployer"), "roles/run.admin", f"project:{PROJECT}"),
    (sa("assay-deployer"), "roles/container.developer", f"project:{PROJECT}"),
    (sa("assay-deployer"), "roles/datastore.indexAdmin", f"project:{PROJECT}"),
    (sa("assay-deployer"), "roles/artifactregistry.writer", "repository:assay"),
    (sa("assay-deployer"), "roles/iam.serviceAccountUser", f"sa:assay-functions@{PROJECT}.iam.gserviceaccount.com"),
    (sa("assay-deployer"), "roles/iam.serviceAccountUser", f"sa:assay-invoker@{PROJECT}.iam.gserviceaccount.com"),
    (sa("assay-deployer"), "roles/iam.serviceAccountUser", f"sa:assay-deployer@{PROJECT}.iam.gserviceaccount.com"),
    # the build copies the webhook key into the daemon's Kubernetes Secret (the daemon's own
    # Google identity never reads Secret Manager); the console secret stays with the api
    (sa("assay-deployer"), "roles/secretmanager.secretAccessor", "secret:assay-webhook-signing-key"),
    # Google's service agents: dead-lettering and object notifications
    (PUBSUB_AGENT, "roles/pubsub.publisher", "topic:assay-hints-dead-letter"),
    (PUBSUB_AGENT, "roles/pubsub.subscriber", "subscription:assay-daemon-hints"),
    (GCS_AGENT, "roles/pubsub.publisher", "topic:assay-storage-events"),
}


def words(call: list[str]) -> list[str]:
    return [a for a in call[1:] if not a.startswith("-")]


def flags(call: list[str]) -> dict[str, str]:
    out = {}
    for a in call[1:]:
        if a.startswith("--"):
            name, _, value = a[2:].partition("=")
            out[name] = value
    return out


def grants(calls: list[list[str]]) -> set[tuple[str, str, str]]:
    out = set()
    for call in calls:
        w, f = words(call), flags(call)
        if "add-iam-policy-binding" not in w:
            continue
        group, target = w[: w.index("add-iam-policy-binding")], w[w.index("add-iam-policy-binding") + 1]
        resource = {
            ("projects",): f"project:{target}",
            ("storage", "buckets"): target,
            ("pubsub", "topics"): f"topic:{target}",
            ("pubsub", "subscriptions"): f"subscription:{target}",
            ("iam", "service-accounts"): f"sa:{target}",
            ("artifacts", "repositories"): f"repository:{target}",
            ("secrets",): f"secret:{target}",
        }[tuple(group)]
        condition = f.get("condition")
        if condition and condition != "None":
            resource += f" if {condition}"
        out.add((f["member"], f["role"], resource))
    return out


@pytest.fixture(scope="module")
def fresh_calls(run_setup, tmp_path_factory) -> list[list[str]]:
    return run_setup(tmp_path_factory.mktemp("setup"), state="fresh", PROJECT_ID=PROJECT)


def test_grants_exactly_the_least_privilege_table(fresh_calls):
    made = grants(fresh_calls)
    assert made - EXPECTED_GRANTS == set(), "grants nobody asked for"
    assert EXPECTED_GRANTS - made == set(), "grants missing"


def test_no_basic_roles_and_nothing_public(fresh_calls):
    for member, role, _ in grants(fresh_calls):
        assert role not in {"roles/owner", "roles/editor", "roles/viewer"}
        # run.admin is the one admin role: making the api function public sets its policy.
        assert not role.endswith(".admin") or role == "roles/run.admin", role
        assert member not in {"allUsers", "allAuthenticatedUsers"}


def test_project_level_roles_only_where_nothing_narrower_exists(fresh_calls):
    narrowable = ("roles/storage.", "roles/pubsub.", "roles/artifactregistry.", "roles/iam.", "roles/secretmanager.")
    for _, role, resource in grants(fresh_calls):
        if resource.startswith("project:"):
            assert not role.startswith(narrowable), f"{role} should be granted on its resource"


def test_bucket_is_private_uniform_with_cors_and_abandoned_upload_cleanup(fresh_calls):
    create = next(c for c in fresh_calls if words(c)[:3] == ["storage", "buckets", "create"])
    update = next(c for c in fresh_calls if words(c)[:3] == ["storage", "buckets", "update"])
    for call in (create, update):
        assert "--uniform-bucket-level-access" in call and "--public-access-prevention" in call
    cors = json.loads(Path(flags(update)["cors-file"]).read_text())
    assert {"PUT", "GET", "HEAD"} <= set(cors[0]["method"])
    assert "Content-Type" in cors[0]["responseHeader"]
    lifecycle = json.loads(Path(flags(update)["lifecycle-file"]).read_text())
    deletes = [r for r in lifecycle["rule"] if r["action"]["type"] == "Delete"]
    assert deletes and all(r["condition"]["matchesPrefix"] == ["uploads/"] for r in deletes), (
        "only abandoned uploads may expire; models, datasets and results are kept"
    )


def test_pubsub_names_are_the_settings_defaults_and_hints_dead_letter(fresh_calls):
    defaults = Settings()
    created_topics = {words(c)[3] for c in fresh_calls if words(c)[:3] == ["pubsub", "topics", "create"]}
    assert {defaults.hint_topic, defaults.storage_topic} <= created_topics
    subs = {words(c)[3]: flags(c) for c in fresh_calls if words(c)[:3] == ["pubsub", "subscriptions", "create"]}
    hints = subs[defaults.hint_subscription]
    assert hints["topic"] == defaults.hint_topic
    assert hints["dead-letter-topic"] in created_topics and int(hints["max-delivery-attempts"]) >= 5
    dead_letter_subscribers = [s for s, f in subs.items() if f["topic"] == hints["dead-letter-topic"]]
    assert dead_letter_subscribers, "dead letters need a subscription, or they are dropped"


def test_finalized_uploads_are_notified_to_the_storage_topic(fresh_calls):
    (note,) = [c for c in fresh_calls if words(c)[:4] == ["storage", "buckets", "notifications", "create"]]
    f = flags(note)
    assert f == {
        "project": PROJECT,
        "quiet": "",
        "topic": Settings().storage_topic,
        "event-types": "OBJECT_FINALIZE",
        "object-prefix": "uploads/",
        "payload-format": "json",
    }


def test_workload_identity_matches_the_kubernetes_service_accounts(fresh_calls):
    docs = yaml.safe_load_all((ROOT / "infra" / "k8s" / "cluster" / "serviceaccounts.yaml").read_text())
    for doc in docs:
        meta = doc["metadata"]
        gsa = meta["annotations"]["iam.gke.io/gcp-service-account"].replace("${PROJECT_ID}", PROJECT)
        member = f"serviceAccount:{PROJECT}.svc.id.goog[{meta['namespace']}/{meta['name']}]"
        assert (member, "roles/iam.workloadIdentityUser", f"sa:{gsa}") in grants(fresh_calls)


SECRETS = {"assay-webhook-signing-key": "webhook_signing_key", "assay-console-secret": "console_secret"}


def test_secrets_are_created_random_and_private(fresh_calls, run_setup, tmp_path):
    enable = next(c for c in fresh_calls if words(c)[:2] == ["services", "enable"])
    assert "secretmanager.googleapis.com" in words(enable)
    creates = {words(c)[2]: c for c in fresh_calls if words(c)[:2] == ["secrets", "create"]}
    assert set(creates) == set(SECRETS)
    assert set(SECRETS.values()) <= set(Settings.model_fields)  # ASSAY_<FIELD> is what reads them
    for call in creates.values():
        # the value comes on stdin, never on the command line
        assert flags(call)["data-file"] == "-" and flags(call)["replication-policy"] == "automatic"
    # a second fresh project draws different values: 256 random bits each, as base64 text
    again = tmp_path / "again"
    again.mkdir()
    run_setup(again, state="fresh", PROJECT_ID=PROJECT)
    values = [(again / f"calls-fresh.log.data.{name}").read_text() for name in SECRETS]
    assert len(set(values)) == len(values)
    for value in values:
        assert len(base64.b64decode(value, validate=True)) == 32 and "\n" not in value
    # only the api's identity and the build that hands the key to the daemon may read them
    readers = {(m, r) for m, role, r in grants(fresh_calls) if r.startswith("secret:")}
    assert readers == {
        (sa("assay-functions"), "secret:assay-webhook-signing-key"),
        (sa("assay-functions"), "secret:assay-console-secret"),
        (sa("assay-deployer"), "secret:assay-webhook-signing-key"),
    }


def test_composite_indexes_are_deployed(fresh_calls):
    (call,) = [c for c in fresh_calls if words(c)[:3] == ["datastore", "indexes", "create"]]
    assert Path(words(call)[3]) == ROOT / "infra" / "gcp" / "index.yaml"


def test_second_run_creates_nothing(run_setup, tmp_path):
    calls = run_setup(tmp_path, state="existing", PROJECT_ID=PROJECT)
    creates = [c for c in calls if "create" in words(c) and words(c)[:3] != ["datastore", "indexes", "create"]]
    assert creates == []  # existing secrets keep their value: no create, no new version
    assert not [c for c in calls if words(c)[:3] == ["secrets", "versions", "add"]]
    assert grants(calls) == EXPECTED_GRANTS  # re-applied: bindings are additive, so harmless


def test_every_gcloud_command_parses(fresh_calls, gcloud_refusals):
    # --data-file=- would have the in-process parser read its own stdin (its command pipe)
    argvs = [["--data-file=/dev/null" if a == "--data-file=-" else a for a in c[1:]] for c in fresh_calls if c[0] == "gcloud"]
    assert gcloud_refusals(argvs) == []
