# NASDAQ TotalView-ITCH 5.0 messages as packed C structs: the one definition of every layout.
#
# Each struct mirrors its wire message field for field, in wire order, with two deliberate
# differences: integers are native-endian, and the 6-byte wire timestamp is widened to a uint64
# (nanoseconds since midnight). So sizeof(struct) == wire length + 2, and feedhandler.itch.DTYPES
# is derived from these declarations (see decode.pyx: message_layouts), never written twice.
# Prices keep the spec's integers: 4 implied decimals, 8 for the MWCB levels of 'V'.
# Alpha fields are fixed-width, space padded, exactly as on the wire.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


# The header every message starts with, twice: as decoded (the first four fields of each struct
# below) and as on the wire (big-endian integers as byte arrays, the 6-byte timestamp).
cdef packed struct MessageHeader:
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp

cdef packed struct WireMessageHeader:
    char message_type
    uint8_t stock_locate[2]
    uint8_t tracking_number[2]
    uint8_t timestamp[6]


cdef packed struct SystemEvent:                       # 'S'
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    char event_code

cdef packed struct StockDirectory:                    # 'R'
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    char stock[8]
    char market_category
    char financial_status_indicator
    uint32_t round_lot_size
    char round_lots_only
    char issue_classification
    char issue_sub_type[2]
    char authenticity
    char short_sale_threshold_indicator
    char ipo_flag
    char luld_reference_price_tier
    char etp_flag
    uint32_t etp_leverage_factor
    char inverse_indicator

cdef packed struct StockTradingAction:                # 'H'
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    char stock[8]
    char trading_state
    char reserved
    char reason[4]

cdef packed struct RegShoRestriction:                 # 'Y'
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    char stock[8]
    char reg_sho_action

cdef packed struct MarketParticipantPosition:         # 'L'
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    char mpid[4]
    char stock[8]
    char primary_market_maker
    char market_maker_mode
    char market_participant_state

cdef packed struct MwcbDeclineLevel:                  # 'V'
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    uint64_t level_1
    uint64_t level_2
    uint64_t level_3

cdef packed struct MwcbStatus:                        # 'W'
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    char breached_level

cdef packed struct IpoQuotingPeriodUpdate:            # 'K'
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    char stock[8]
    uint32_t ipo_quotation_release_time
    char ipo_quotation_release_qualifier
    uint32_t ipo_price

cdef packed struct LuldAuctionCollar:                 # 'J'
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    char stock[8]
    uint32_t auction_collar_reference_price
    uint32_t upper_auction_collar_price
    uint32_t lower_auction_collar_price
    uint32_t auction_collar_extension

cdef packed struct OperationalHalt:                   # 'h'
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    char stock[8]
    char market_code
    char operational_halt_action

cdef packed struct AddOrder:                          # 'A'
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    uint64_t order_reference_number
    char buy_sell_indicator
    uint32_t shares
    char stock[8]
    uint32_t price

cdef packed struct AddOrderMpid:                      # 'F'
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    uint64_t order_reference_number
    char buy_sell_indicator
    uint32_t shares
    char stock[8]
    uint32_t price
    char attribution[4]

cdef packed struct OrderExecuted:                     # 'E'
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    uint64_t order_reference_number
    uint32_t executed_shares
    uint64_t match_number

cdef packed struct OrderExecutedWithPrice:            # 'C'
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    uint64_t order_reference_number
    uint32_t executed_shares
    uint64_t match_number
    char printable
    uint32_t execution_price

cdef packed struct OrderCancel:                       # 'X'
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    uint64_t order_reference_number
    uint32_t cancelled_shares

cdef packed struct OrderDelete:                       # 'D'
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    uint64_t order_reference_number

cdef packed struct OrderReplace:                      # 'U'
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    uint64_t original_order_reference_number
    uint64_t new_order_reference_number
    uint32_t shares
    uint32_t price

cdef packed struct Trade:                             # 'P' (non-cross)
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    uint64_t order_reference_number
    char buy_sell_indicator
    uint32_t shares
    char stock[8]
    uint32_t price
    uint64_t match_number

cdef packed struct CrossTrade:                        # 'Q'
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    uint64_t shares
    char stock[8]
    uint32_t cross_price
    uint64_t match_number
    char cross_type

cdef packed struct BrokenTrade:                       # 'B'
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    uint64_t match_number

cdef packed struct NetOrderImbalance:                 # 'I' (NOII)
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    uint64_t paired_shares
    uint64_t imbalance_shares
    char imbalance_direction
    char stock[8]
    uint32_t far_price
    uint32_t near_price
    uint32_t current_reference_price
    char cross_type
    char price_variation_indicator

cdef packed struct RetailPriceImprovement:            # 'N' (RPII)
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    char stock[8]
    char interest_flag

cdef packed struct DirectListingCapitalRaise:         # 'O' (DLCR)
    char message_type
    uint16_t stock_locate
    uint16_t tracking_number
    uint64_t timestamp
    char stock[8]
    char open_eligibility_status
    uint32_t minimum_allowable_price
    uint32_t maximum_allowable_price
    uint32_t near_execution_price
    uint64_t near_execution_time
    uint32_t lower_price_range_collar
    uint32_t upper_price_range_collar
