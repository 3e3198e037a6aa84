"""Differential privacy on the cloud, one reason to change per module.

client_level.py  `fed.dp: central|local`: calibration over the rounds, the central noise
record_level.py  `fed.dp: record`: calibration over every node's DP-SGD steps, epsilon ledger
federation.py    what the round loop asks: checks, the run's plan (`RunPrivacy`), reply
                 records, the aggregate it applies and what each node is charged
w_coordinate.py the clients' mean w (expected cross KD) as one coordinate of the private update
report.py        privacy.csv / privacy_ledger.csv and privacy.json in the run folder

The node's side is client/node/privacy.py (local DP) and client/node/record_dp.py; the maths
both sides use is shared/privacy/.
"""
