"""Envoy's external authorization and rate limit services, translated to the engines DecisionService uses."""
