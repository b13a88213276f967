#!/bin/sh
# Keeps Kamailio's dispatcher list (kamailio.cfg, DISPATCHER_LIST) equal to the engines
# a DNS name resolves to, and has Kamailio reread it when that changes. In Kubernetes
# the name is the engines' headless Service (k8s/engine.yaml, ccengine-sip): one address
# per ready engine pod, so scaling up or down changes the list within INTERVAL seconds.
# (A draining engine drops out of the Service, and Kamailio's OPTIONS checks already took
# it out of the set; calls in progress go on: their requests follow the Record-Route.)
#
#   ENGINES          the name to resolve (required)
#   ENGINE_SIP_PORT  the engines' SIP port                      default 5060
#   LIST             the list file kamailio.cfg reads            default /run/kamailio/dispatcher.list
#   CTL              Kamailio's control socket (CTL_SOCKET)     default unix:/run/kamailio/kamailio_ctl
#   INTERVAL         seconds between looks                      default 10
# With --once: write the list once and exit (an init container, before Kamailio starts).
set -eu
: "${ENGINES:?ENGINES: the DNS name of the engines}"
ENGINE_SIP_PORT="${ENGINE_SIP_PORT:-5060}"
LIST="${LIST:-/run/kamailio/dispatcher.list}"
CTL="${CTL:-unix:/run/kamailio/kamailio_ctl}"
INTERVAL="${INTERVAL:-10}"

sync_once() {
	new="$LIST.new"
	if ! answer="$(getent ahostsv4 "$ENGINES")"; then
		# no answer (no engine ready, DNS down): the list stays as it is (Kamailio's
		# OPTIONS checks take engines that are gone out of it); at the start, empty
		[ -f "$LIST" ] && return 1
		answer=""
	fi
	printf '%s\n' "$answer" | awk 'NF {print $1}' | sort -u \
		| sed "s|.*|1 sip:&:$ENGINE_SIP_PORT|" >"$new"
	if [ -f "$LIST" ] && cmp -s "$new" "$LIST"; then
		rm -f "$new"
		return 1
	fi
	mv "$new" "$LIST"
	echo "dispatcher-sync: $(wc -l <"$LIST") engines: $(tr '\n' ' ' <"$LIST")"
	return 0
}

if [ "${1:-}" = "--once" ]; then
	sync_once || true
	exit 0
fi
while :; do
	if sync_once; then
		kamcmd -s "$CTL" dispatcher.reload || echo "dispatcher-sync: reload failed" >&2
	fi
	sleep "$INTERVAL"
done
