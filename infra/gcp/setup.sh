#!/usr/bin/env bash
# Create or bring up to date every Google Cloud resource Assay needs in one project.
#
#   PROJECT_ID=my-project REGION=us-central1 infra/gcp/setup.sh
#
# Idempotent: each resource is looked up first and only created when missing, and IAM
# bindings are additive, so a second run changes nothing. It grants each identity only the
# roles it needs, on the narrowest resource that carries them (the bucket, one topic, one
# subscription, one service account) and at project level only where Google Cloud offers
# nothing narrower (Datastore, Cloud Functions, GKE).
#
# Why a gcloud script and not Terraform: see infra/README.md ("Why gcloud").
#
# Environment:
#   PROJECT_ID (required)   REGION (us-central1)   BUCKET (<project>-assay)
#   CLUSTER (assay)         REPOSITORY (assay: the Artifact Registry repository)
#   CREATE_CLUSTER (1: create a GKE Autopilot cluster; 0: bring your own, WI enabled)
#
# Secrets (Secret Manager) are created with a random value when missing and never
# overwritten; rotating one is a deliberate step (infra/README.md, "Secrets").
set -euo pipefail

: "${PROJECT_ID:?set PROJECT_ID to the Google Cloud project to deploy into}"
REGION=${REGION:-us-central1}
BUCKET=${BUCKET:-${PROJECT_ID}-assay}
CLUSTER=${CLUSTER:-assay}
REPOSITORY=${REPOSITORY:-assay}
CREATE_CLUSTER=${CREATE_CLUSTER:-1}
K8S_NAMESPACE=assay

HINT_TOPIC=assay-hints
HINT_SUBSCRIPTION=assay-daemon-hints
DEAD_LETTER_TOPIC=assay-hints-dead-letter
DEAD_LETTER_SUBSCRIPTION=assay-hints-dead-letter
STORAGE_TOPIC=assay-storage-events
# Read as ASSAY_WEBHOOK_SIGNING_KEY (api, daemon) and ASSAY_CONSOLE_SECRET (api).
WEBHOOK_KEY_SECRET=assay-webhook-signing-key
CONSOLE_SECRET=assay-console-secret

here=$(cd "$(dirname "$0")" && pwd)

gc() { gcloud --project="$PROJECT_ID" --quiet "$@"; }
exists() { gc "$@" >/dev/null 2>&1; }
# IAM can take a minute to see a service account created a moment ago.
retry() {
  local attempt
  for attempt in 1 2 3 4 5 6; do
    "$@" && return 0
    [[ $attempt == 6 ]] && return 1
    echo "   retrying in 10s: ${*:1:4} ..." >&2
    sleep 10
  done
}
step() { echo "== $*" >&2; }
sa_email() { echo "$1@${PROJECT_ID}.iam.gserviceaccount.com"; }

FUNCTIONS_SA=$(sa_email assay-functions)
INVOKER_SA=$(sa_email assay-invoker)
DAEMON_SA=$(sa_email assay-daemon)
WORKER_SA=$(sa_email assay-worker)
DEPLOYER_SA=$(sa_email assay-deployer)

grant_project() { # MEMBER ROLE
  retry gc projects add-iam-policy-binding "$PROJECT_ID" --member="$1" --role="$2" --condition=None >/dev/null
}
grant_bucket() { # MEMBER ROLE [CONDITION]
  local extra=()
  [[ $# -ge 3 ]] && extra=(--condition="$3")
  retry gc storage buckets add-iam-policy-binding "gs://$BUCKET" --member="$1" --role="$2" "${extra[@]}" >/dev/null
}
grant_topic() { # TOPIC MEMBER ROLE
  retry gc pubsub topics add-iam-policy-binding "$1" --member="$2" --role="$3" >/dev/null
}
grant_subscription() { # SUBSCRIPTION MEMBER ROLE
  retry gc pubsub subscriptions add-iam-policy-binding "$1" --member="$2" --role="$3" >/dev/null
}
grant_service_account() { # SA_EMAIL MEMBER ROLE
  retry gc iam service-accounts add-iam-policy-binding "$1" --member="$2" --role="$3" >/dev/null
}
grant_secret() { # SECRET MEMBER ROLE
  retry gc secrets add-iam-policy-binding "$1" --member="$2" --role="$3" >/dev/null
}

step "APIs"
gc services enable \
  artifactregistry.googleapis.com cloudbuild.googleapis.com cloudfunctions.googleapis.com \
  container.googleapis.com datastore.googleapis.com eventarc.googleapis.com \
  firestore.googleapis.com iam.googleapis.com iamcredentials.googleapis.com \
  logging.googleapis.com pubsub.googleapis.com run.googleapis.com secretmanager.googleapis.com \
  storage.googleapis.com

PROJECT_NUMBER=$(gc projects describe "$PROJECT_ID" --format='value(projectNumber)')
PUBSUB_AGENT="serviceAccount:service-${PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"

step "Datastore: Firestore in Datastore mode, composite indexes"
if ! exists firestore databases describe --database='(default)'; then
  gc firestore databases create --database='(default)' --location="$REGION" --type=datastore-mode
fi
gc datastore indexes create "$here/index.yaml"

step "Artifact Registry: repository $REPOSITORY"
if ! exists artifacts repositories describe "$REPOSITORY" --location="$REGION"; then
  gc artifacts repositories create "$REPOSITORY" --location="$REGION" --repository-format=docker \
    --description="Assay daemon and worker images"
fi
gc artifacts repositories set-cleanup-policies "$REPOSITORY" --location="$REGION" \
  --policy="$here/artifact-cleanup.json" --no-dry-run

step "Cloud Storage: bucket gs://$BUCKET"
if ! exists storage buckets describe "gs://$BUCKET"; then
  gc storage buckets create "gs://$BUCKET" --location="$REGION" --default-storage-class=STANDARD \
    --uniform-bucket-level-access --public-access-prevention
fi
gc storage buckets update "gs://$BUCKET" --uniform-bucket-level-access --public-access-prevention \
  --cors-file="$here/cors.json" --lifecycle-file="$here/lifecycle.json"

step "Pub/Sub: topics and subscriptions"
for topic in "$HINT_TOPIC" "$DEAD_LETTER_TOPIC" "$STORAGE_TOPIC"; do
  if ! exists pubsub topics describe "$topic"; then
    gc pubsub topics create "$topic"
  fi
done
# Hints are wake-ups: worthless after minutes, so they are kept briefly. A hint that keeps
# failing (a daemon bug) lands in the dead-letter topic, where it is kept for a week.
if ! exists pubsub subscriptions describe "$DEAD_LETTER_SUBSCRIPTION"; then
  gc pubsub subscriptions create "$DEAD_LETTER_SUBSCRIPTION" --topic="$DEAD_LETTER_TOPIC" \
    --message-retention-duration=7d --expiration-period=never
fi
if ! exists pubsub subscriptions describe "$HINT_SUBSCRIPTION"; then
  gc pubsub subscriptions create "$HINT_SUBSCRIPTION" --topic="$HINT_TOPIC" \
    --ack-deadline=30 --message-retention-duration=10m --expiration-period=never \
    --dead-letter-topic="$DEAD_LETTER_TOPIC" --max-delivery-attempts=5
fi
# Dead-lettering is done by the Pub/Sub service agent: it must publish to the dead-letter
# topic and acknowledge on the source subscription.
grant_topic "$DEAD_LETTER_TOPIC" "$PUBSUB_AGENT" roles/pubsub.publisher
grant_subscription "$HINT_SUBSCRIPTION" "$PUBSUB_AGENT" roles/pubsub.subscriber

step "Object notifications: finalized uploads -> $STORAGE_TOPIC"
GCS_AGENT="serviceAccount:$(gc storage service-agent)"
grant_topic "$STORAGE_TOPIC" "$GCS_AGENT" roles/pubsub.publisher
if ! gc storage buckets notifications list "gs://$BUCKET" --format='value(topic)' | grep -q "/topics/${STORAGE_TOPIC}\$"; then
  gc storage buckets notifications create "gs://$BUCKET" --topic="$STORAGE_TOPIC" \
    --event-types=OBJECT_FINALIZE --object-prefix=uploads/ --payload-format=json
fi

step "Secret Manager: $WEBHOOK_KEY_SECRET, $CONSOLE_SECRET"
# 256 random bits each, base64 (the settings read them as text). Piped in, never on a
# command line. An existing secret is left alone: a new value would change every webhook's
# secret, or sign everyone out of the console.
for secret in "$WEBHOOK_KEY_SECRET" "$CONSOLE_SECRET"; do
  if ! exists secrets describe "$secret"; then
    head -c 32 /dev/urandom | base64 | tr -d '\n' |
      gc secrets create "$secret" --replication-policy=automatic --labels=app=assay --data-file=-
  fi
done

step "Service accounts"
for name in assay-functions assay-invoker assay-daemon assay-worker assay-deployer; do
  if ! exists iam service-accounts describe "$(sa_email "$name")"; then
    gc iam service-accounts create "$name" --display-name="Assay ${name#assay-}"
  fi
done

step "IAM: functions (api, storage_events)"
grant_project "serviceAccount:$FUNCTIONS_SA" roles/datastore.user
# Reads result sets and object metadata anywhere in the bucket; writes only under uploads/.
# The signed upload URLs it hands out act with its permissions, so this prefix is also all
# a client can ever write.
grant_bucket "serviceAccount:$FUNCTIONS_SA" roles/storage.objectViewer
grant_bucket "serviceAccount:$FUNCTIONS_SA" roles/storage.objectUser \
  "expression=resource.name.startsWith('projects/_/buckets/${BUCKET}/objects/uploads/'),title=uploads-only"
grant_topic "$HINT_TOPIC" "serviceAccount:$FUNCTIONS_SA" roles/pubsub.publisher
# V4 signed URLs are signed through IAM signBlob, as this account, by this account.
grant_service_account "$FUNCTIONS_SA" "serviceAccount:$FUNCTIONS_SA" roles/iam.serviceAccountTokenCreator
# The api derives webhook secrets (shown once when a webhook is made) and signs the
# console's cookies; both functions run as this account, storage_events reads neither.
grant_secret "$WEBHOOK_KEY_SECRET" "serviceAccount:$FUNCTIONS_SA" roles/secretmanager.secretAccessor
grant_secret "$CONSOLE_SECRET" "serviceAccount:$FUNCTIONS_SA" roles/secretmanager.secretAccessor

step "IAM: invoker (the identity Eventarc uses to deliver storage events)"
grant_project "serviceAccount:$INVOKER_SA" roles/run.invoker

step "IAM: daemon (GKE, Workload Identity)"
grant_project "serviceAccount:$DAEMON_SA" roles/datastore.user
# Deletions remove stored data: object list, read and delete on the bucket.
grant_bucket "serviceAccount:$DAEMON_SA" roles/storage.objectUser
grant_subscription "$HINT_SUBSCRIPTION" "serviceAccount:$DAEMON_SA" roles/pubsub.subscriber
grant_service_account "$DAEMON_SA" \
  "serviceAccount:${PROJECT_ID}.svc.id.goog[${K8S_NAMESPACE}/assay-daemon]" roles/iam.workloadIdentityUser

step "IAM: workers (GKE, Workload Identity)"
grant_project "serviceAccount:$WORKER_SA" roles/datastore.user
grant_bucket "serviceAccount:$WORKER_SA" roles/storage.objectUser
grant_service_account "$WORKER_SA" \
  "serviceAccount:${PROJECT_ID}.svc.id.goog[${K8S_NAMESPACE}/assay-worker]" roles/iam.workloadIdentityUser

step "IAM: deployer (Cloud Build runs cloudbuild.yaml as this account)"
# Build logs, build sources, and the builds of the functions' source (it is their build
# service account too).
grant_project "serviceAccount:$DEPLOYER_SA" roles/cloudbuild.builds.builder
grant_project "serviceAccount:$DEPLOYER_SA" roles/cloudfunctions.developer
# 2nd-gen functions are Cloud Run services; making `api` public sets their invoker policy.
grant_project "serviceAccount:$DEPLOYER_SA" roles/run.admin
grant_project "serviceAccount:$DEPLOYER_SA" roles/container.developer
grant_project "serviceAccount:$DEPLOYER_SA" roles/datastore.indexAdmin
# The daemon signs webhook deliveries: the build copies the key into the Kubernetes Secret
# the daemon's Pods read (cloudbuild.yaml, deploy-daemon). Nothing new in effect: as the
# user of assay-functions the deployer can already deploy code that reads it.
grant_secret "$WEBHOOK_KEY_SECRET" "serviceAccount:$DEPLOYER_SA" roles/secretmanager.secretAccessor
retry gc artifacts repositories add-iam-policy-binding "$REPOSITORY" --location="$REGION" \
  --member="serviceAccount:$DEPLOYER_SA" --role=roles/artifactregistry.writer >/dev/null
# Deploying a function that runs as (or is triggered as) an account is acting as it.
grant_service_account "$FUNCTIONS_SA" "serviceAccount:$DEPLOYER_SA" roles/iam.serviceAccountUser
grant_service_account "$INVOKER_SA" "serviceAccount:$DEPLOYER_SA" roles/iam.serviceAccountUser
grant_service_account "$DEPLOYER_SA" "serviceAccount:$DEPLOYER_SA" roles/iam.serviceAccountUser

step "GKE: cluster $CLUSTER and the cluster-scoped manifests"
if [[ $CREATE_CLUSTER == 1 ]] && ! exists container clusters describe "$CLUSTER" --location="$REGION"; then
  # Autopilot: Workload Identity is always on, and GPU nodes exist only while a Job asks
  # for one, so the GPU pool costs nothing at rest.
  gc container clusters create-auto "$CLUSTER" --location="$REGION" --release-channel=regular
fi
gc container clusters get-credentials "$CLUSTER" --location="$REGION"
rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
PROJECT_ID=$PROJECT_ID "$here/../k8s/render.sh" cluster "$rendered"
# Namespace, service accounts and RBAC: applied here, by an administrator, once. The
# deployer's container.developer role cannot create RBAC objects, and should not.
kubectl apply -f "$rendered/namespace.yaml"
kubectl apply -f "$rendered"

step "done"
cat >&2 <<EOF
Project $PROJECT_ID is ready. Deploy with:
  gcloud builds submit --project=$PROJECT_ID --config=cloudbuild.yaml \\
    --service-account=projects/$PROJECT_ID/serviceAccounts/$DEPLOYER_SA \\
    --substitutions=_REGION=$REGION,_BUCKET=$BUCKET,_CLUSTER=$CLUSTER,_REPOSITORY=$REPOSITORY
EOF
