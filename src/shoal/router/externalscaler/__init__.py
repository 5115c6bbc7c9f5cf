"""KEDA's external scaler protocol: the .proto and its generated modules (do not edit those;
scripts/generate-keda-stubs.sh regenerates them)."""
