#!/bin/bash
# cap.sh OUT SERVER_PORT LISTEN_PORT -- client command with {port}
out=$1; sport=$2; lport=$3; shift 3
python3 record_relay.py tcp $lport $sport $out & relay=$!
sleep 1
cmd="${*//\{port\}/$lport}"
bash -c "$cmd" > /dev/null 2>&1
wait $relay
