// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title ComputeMesh job escrow
/// @notice A consumer funds a job's budget in the settlement token, on terms the platform's
///         operator signed for that consumer (EIP-712 `FundTerms`: job id, consumer, amount,
///         deadline); the operator settles it once: each provider's payout and the platform fee are credited, the rest
///         goes back to the consumer. Credits are pull payments (`withdraw`, or `withdrawFor`,
///         which anyone may call because it only ever pays an account its own balance).
///         If the platform never settles, the consumer takes the whole deposit back after the
///         job's deadline, even while the escrow is paused. Only the consumer the terms name can
///         fund, top up or refund a job id: nobody can take a job id first (front-running)
///         or pick their own deadline (funding, being served, and refunding before settlement).
/// @dev Invariant: token.balanceOf(this) == sum of Funded deposits + sum of owed.
///      The token must move exactly the amount asked (no fee-on-transfer or rebasing tokens).
///
///      Storage, two slots per job: the deposit held (consumer, amount) and the terms
///      (deadline, state). When a job closes its deposit slot is emptied, and the storage
///      refund for that pays for much of the settlement; a settlement writes nothing else, so
///      a job whose terms say Funded but whose deposit slot is empty has been Settled
///      (`escrows` and the errors report it as such). A refund records Refunded. A Funded
///      job's deposit slot is never empty: the consumer is its funder and the amount > 0.
contract JobEscrow is AccessControl, Pausable, ReentrancyGuardTransient, EIP712 {
    using SafeERC20 for IERC20;

    bytes32 public constant OPERATOR_ROLE = keccak256("OPERATOR_ROLE");
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");
    /// @notice EIP-712 type of the terms an operator signs for one funding.
    bytes32 public constant FUND_TERMS_TYPEHASH =
        keccak256("FundTerms(bytes32 jobId,address consumer,uint96 amount,uint64 deadline)");

    enum State {
        None,
        Funded,
        Settled,
        Refunded
    }

    struct Deposit {
        address consumer;
        uint96 amount;
    }

    struct Escrow {
        Deposit deposit;
        uint64 deadline;
        State state; // as stored: Funded with an empty deposit means Settled
    }

    struct Settlement {
        bytes32 jobId;
        address[] providers;
        uint96[] amounts;
        uint96 fee;
    }

    IERC20 public immutable token;
    /// @notice Receives the platform fee. Immutable (a multisig rotates its signers, not its
    ///         address), which saves a storage read per settlement.
    address public immutable treasury;

    mapping(bytes32 jobId => Escrow) private _escrows;
    mapping(address account => uint256) public owed;

    event JobFunded(bytes32 indexed jobId, address indexed consumer, uint256 amount, uint64 deadline);
    event JobToppedUp(bytes32 indexed jobId, address indexed from, uint256 amount, uint256 total);
    event JobSettled(bytes32 indexed jobId, uint256 paidToProviders, uint256 fee, uint256 refunded);
    event SettlementSkipped(bytes32 indexed jobId, State state);
    event JobRefunded(bytes32 indexed jobId, address indexed consumer, uint256 amount);
    event Withdrawn(address indexed account, uint256 amount);

    error ZeroAddress();
    error ZeroAmount();
    error DeadlineNotInFuture(uint64 deadline);
    error JobExists(bytes32 jobId, State state);
    error NotFunded(bytes32 jobId, State state);
    error LengthMismatch(bytes32 jobId, uint256 providers, uint256 amounts);
    error ZeroProvider(bytes32 jobId);
    error PayoutExceedsDeposit(bytes32 jobId, uint256 payout, uint256 deposit);
    error NotConsumer(bytes32 jobId, address caller);
    error DeadlineNotReached(bytes32 jobId, uint64 deadline);
    error NothingOwed(address account);
    error TermsNotSigned(bytes32 jobId, address signer);

    /// @param admin    DEFAULT_ADMIN_ROLE: grants and revokes every role (a cold key or multisig).
    /// @param pauser   PAUSER_ROLE: pauses funding and settlement.
    /// @param operator OPERATOR_ROLE: signs funding terms, settles, refunds.
    constructor(address token_, address treasury_, address admin, address pauser, address operator)
        EIP712("ComputeMesh JobEscrow", "1")
    {
        if (
            token_ == address(0) || treasury_ == address(0) || admin == address(0) || pauser == address(0)
                || operator == address(0)
        ) {
            revert ZeroAddress();
        }
        token = IERC20(token_);
        treasury = treasury_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(PAUSER_ROLE, pauser);
        _grantRole(OPERATOR_ROLE, operator);
    }

    // --- consumer ---------------------------------------------------------------------

    /// @notice Deposit `amount` for `jobId`, pulled from the caller (who must have approved
    ///         it), refundable to the caller from `deadline` on if the job is never settled.
    ///         `signature` is an operator's EIP-712 signature of FundTerms(jobId, caller,
    ///         amount, deadline): the platform signs the job's own terms for the owner's wallet,
    ///         so another caller, amount or deadline recovers another signer and reverts.
    function fund(bytes32 jobId, uint96 amount, uint64 deadline, bytes calldata signature)
        external
        whenNotPaused
        nonReentrant
    {
        if (amount == 0) revert ZeroAmount();
        if (deadline <= block.timestamp) revert DeadlineNotInFuture(deadline);
        Escrow storage e = _escrows[jobId];
        if (e.state != State.None) revert JobExists(jobId, _stateOf(e));
        // No nonce is needed: a job id is funded at most once, and the terms name the caller.
        address signer = ECDSA.recoverCalldata(
            _hashTypedDataV4(keccak256(abi.encode(FUND_TERMS_TYPEHASH, jobId, msg.sender, amount, deadline))),
            signature
        );
        if (!hasRole(OPERATOR_ROLE, signer)) revert TermsNotSigned(jobId, signer);
        _escrows[jobId] = Escrow({
            deposit: Deposit({consumer: msg.sender, amount: amount}),
            deadline: deadline,
            state: State.Funded
        });
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit JobFunded(jobId, msg.sender, amount, deadline);
    }

    /// @notice The job's consumer adds `amount` to its funded deposit. Only the consumer: nobody
    ///         but the bound consumer acts on a job id (a stranger's money in someone else's
    ///         escrow could only ever be refunded to that consumer).
    function topUp(bytes32 jobId, uint96 amount) external whenNotPaused nonReentrant {
        if (amount == 0) revert ZeroAmount();
        Escrow storage e = _escrows[jobId];
        address consumer = e.deposit.consumer;
        if (consumer == address(0)) revert NotFunded(jobId, _stateOf(e));
        if (msg.sender != consumer) revert NotConsumer(jobId, msg.sender);
        uint96 total = e.deposit.amount + amount; // checked: a deposit above 2^96-1 reverts
        e.deposit.amount = total;
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit JobToppedUp(jobId, msg.sender, amount, total);
    }

    /// @notice The consumer takes a funded job's whole deposit back, at or after its deadline.
    ///         Works while paused: the platform cannot hold a deposit hostage.
    function refund(bytes32 jobId) external nonReentrant {
        Escrow storage e = _escrows[jobId];
        Deposit memory d = e.deposit;
        if (d.consumer == address(0)) revert NotFunded(jobId, _stateOf(e));
        if (msg.sender != d.consumer) revert NotConsumer(jobId, msg.sender);
        uint64 deadline = e.deadline;
        if (block.timestamp < deadline) revert DeadlineNotReached(jobId, deadline);
        _refund(jobId, e, d);
    }

    // --- anyone: pull payments ----------------------------------------------------------

    /// @notice Pay the caller everything credited to it. Works while paused.
    function withdraw() external nonReentrant {
        _withdraw(msg.sender);
    }

    /// @notice Pay `account` everything credited to it. Anyone may call it (the platform pushes
    ///         payouts to custodial wallets this way): the money only ever goes to its owner.
    function withdrawFor(address account) external nonReentrant {
        _withdraw(account);
    }

    // --- operator -----------------------------------------------------------------------

    /// @notice Settle one funded job: credit each provider its amount and the treasury the
    ///         fee, and credit the rest of the deposit back to the consumer.
    /// @dev No external call happens here (credits only), so no reentrancy guard is needed.
    function settle(Settlement calldata s) external onlyRole(OPERATOR_ROLE) whenNotPaused {
        Escrow storage e = _escrows[s.jobId];
        Deposit memory d = e.deposit;
        if (d.consumer == address(0)) revert NotFunded(s.jobId, _stateOf(e));
        uint256 fee = _settle(e, d, s);
        if (fee != 0) {
            unchecked {
                owed[treasury] += fee;
            }
        }
    }

    /// @notice Settle many jobs. A job that is not Funded (settled, refunded or unknown) is
    ///         skipped with SettlementSkipped, so a retried batch changes nothing; any invalid
    ///         settlement (payout above the deposit, bad arrays) reverts the whole batch.
    function settleBatch(Settlement[] calldata batch)
        external
        onlyRole(OPERATOR_ROLE)
        whenNotPaused
        returns (uint256 settledCount)
    {
        uint256 fees;
        uint256 n = batch.length;
        for (uint256 i; i < n;) {
            Settlement calldata s = batch[i];
            Escrow storage e = _escrows[s.jobId];
            Deposit memory d = e.deposit;
            if (d.consumer != address(0)) {
                unchecked {
                    fees += _settle(e, d, s);
                    ++settledCount;
                }
            } else {
                emit SettlementSkipped(s.jobId, _stateOf(e));
            }
            unchecked {
                ++i;
            }
        }
        // One credit for the batch's fees instead of one per job.
        if (fees != 0) {
            unchecked {
                owed[treasury] += fees;
            }
        }
    }

    /// @notice Give a funded job's whole deposit back to its consumer now (admin decision,
    ///         or a job cancelled before it ran). Works while paused.
    function operatorRefund(bytes32 jobId) external onlyRole(OPERATOR_ROLE) nonReentrant {
        Escrow storage e = _escrows[jobId];
        Deposit memory d = e.deposit;
        if (d.consumer == address(0)) revert NotFunded(jobId, _stateOf(e));
        _refund(jobId, e, d);
    }

    // --- views ------------------------------------------------------------------------

    /// @notice A job's escrow. `consumer` and `amount` are the deposit held now: both read zero
    ///         once the job is Settled or Refunded (its JobFunded/JobToppedUp/JobSettled/
    ///         JobRefunded events keep the history). `state` is a State number.
    function escrows(bytes32 jobId)
        external
        view
        returns (address consumer, uint96 amount, uint64 deadline, State state)
    {
        Escrow storage e = _escrows[jobId];
        return (e.deposit.consumer, e.deposit.amount, e.deadline, _stateOf(e));
    }

    // --- pauser -------------------------------------------------------------------------

    function pause() external onlyRole(PAUSER_ROLE) {
        _pause();
    }

    function unpause() external onlyRole(PAUSER_ROLE) {
        _unpause();
    }

    // --- internals ----------------------------------------------------------------------

    /// @dev Credits a Funded job's providers and consumer, empties its deposit (which marks it
    ///      Settled) and returns the fee, which the caller credits to the treasury (once per
    ///      batch).
    function _settle(Escrow storage e, Deposit memory d, Settlement calldata s) private returns (uint256 fee) {
        address[] calldata providers = s.providers;
        uint96[] calldata amounts = s.amounts;
        uint256 n = providers.length;
        if (n != amounts.length) revert LengthMismatch(s.jobId, n, amounts.length);
        uint256 paid;
        for (uint256 i; i < n;) {
            address provider = providers[i];
            if (provider == address(0)) revert ZeroProvider(s.jobId);
            uint256 amount = amounts[i];
            // Unchecked: uint96 summands cannot overflow 256 bits, and no balance in owed can
            // exceed the tokens this contract holds. A payout above the deposit reverts below,
            // undoing these credits.
            unchecked {
                if (amount != 0) owed[provider] += amount;
                paid += amount;
                ++i;
            }
        }
        uint256 deposit = d.amount;
        fee = s.fee;
        uint256 refunded;
        unchecked {
            uint256 payout = paid + fee;
            if (payout > deposit) revert PayoutExceedsDeposit(s.jobId, payout, deposit);
            refunded = deposit - payout;
            if (refunded != 0) owed[d.consumer] += refunded;
        }
        delete e.deposit; // now reads as Settled (see the contract's storage note)
        emit JobSettled(s.jobId, paid, fee, refunded);
    }

    /// @dev Pays the deposit straight to the consumer: only the consumer is involved, so a
    ///      consumer the token refuses to pay can only block its own refund.
    function _refund(bytes32 jobId, Escrow storage e, Deposit memory d) private {
        delete e.deposit;
        e.state = State.Refunded;
        token.safeTransfer(d.consumer, d.amount);
        emit JobRefunded(jobId, d.consumer, d.amount);
    }

    function _stateOf(Escrow storage e) private view returns (State) {
        State state = e.state;
        if (state == State.Funded && e.deposit.consumer == address(0)) return State.Settled;
        return state;
    }

    function _withdraw(address account) private {
        uint256 amount = owed[account];
        if (amount == 0) revert NothingOwed(account);
        owed[account] = 0;
        token.safeTransfer(account, amount);
        emit Withdrawn(account, amount);
    }
}
